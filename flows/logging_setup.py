"""bzpipe's own log lines in the Prefect UI.

``PREFECT_LOGGING_EXTRA_LOGGERS=bzpipe`` makes Prefect attach its API log handler
to the ``bzpipe`` logger, so records of ``bzpipe.*`` loggers emitted inside a flow
or task run are sent to the server with that run's id.  That alone is not enough:
the ``bzpipe`` logger has no level of its own, so it inherits the root logger's
``WARNING`` (Prefect's default logging config) and every INFO line is dropped
before any handler sees it.  Importing this module (``flows.common`` and
``flows.daily`` do) sets the level and makes sure the handler is attached even
when the environment variable was not set.

Level: ``$BZPIPE_LOG_LEVEL`` (default ``INFO``).
"""

from __future__ import annotations

import logging
import os

LOGGER_NAME = "bzpipe"
ENV_LEVEL = "BZPIPE_LOG_LEVEL"


def configure_bzpipe_logging(level: str | int | None = None) -> logging.Logger:
    """Set the ``bzpipe`` logger's level and attach Prefect's API handler to it (idempotent).

    Returns the ``bzpipe`` logger.  ``level`` defaults to ``$BZPIPE_LOG_LEVEL`` or INFO.
    """
    logger = logging.getLogger(LOGGER_NAME)
    chosen = level if level is not None else os.environ.get(ENV_LEVEL, "INFO")
    logger.setLevel(chosen.upper() if isinstance(chosen, str) else chosen)

    # Prefect copies the handlers of its 'prefect.extra' logger (the API handler) onto
    # PREFECT_LOGGING_EXTRA_LOGGERS when it sets up logging; do the same if bzpipe was
    # not listed there, so the lines reach the UI either way.
    from prefect.logging.configuration import setup_logging  # noqa: F401  (import configures logging)
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

    if LOGGER_NAME not in (PREFECT_LOGGING_EXTRA_LOGGERS.value() or []):
        for handler in logging.getLogger("prefect.extra").handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
    return logger


configure_bzpipe_logging()
