"""Credentials for ARM Live and the Copernicus Climate Data Store, and keeping them secret.

Credentials come from the environment (``ARM_USERNAME``, ``ARM_TOKEN``,
``CDSAPI_URL``, ``CDSAPI_KEY``) or, for the CDS, from ``~/.cdsapirc`` (or the
file named by ``CDSAPI_RC``).  The Prefect flows may also resolve them from
Secret blocks; the library never imports Prefect.

Secrets never appear in a ``repr``, a log line, an exception message, a
config, a manifest or an artifact: the credential classes hide them in
``repr``/``str``, :func:`redact` scrubs text, and :func:`protect_logs`
installs a logging filter that scrubs every registered secret from the
records of the third-party loggers that see request URLs or client settings
(urllib3 logs whole URLs, which carry the ARM token; cdsapi's debug log dumps
the key).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bzpipe.errors import AuthenticationError

#: The new CDS (since September 2024); the old ``/api/v2`` endpoint is gone.
DEFAULT_CDS_URL = "https://cds.climate.copernicus.eu/api"
MASK = "***"

#: Loggers whose records may carry a secret (whole request URLs, client settings).
_GUARDED_LOGGERS = ("urllib3", "urllib3.connectionpool", "requests", "cdsapi", "ecmwf.datastores",
                    "ecmwf.datastores.legacy_client", "ecmwf.datastores.processing", "multiurl",
                    "multiurl.http", "multiurl.retry", "multiurl.base", "act", "bzpipe")


@dataclass(frozen=True)
class ArmCredentials:
    """ARM Live Data Webservice user name and access token."""

    username: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.username or not self.token:
            raise AuthenticationError("ARM Live credentials are incomplete: both a user name and a token "
                                      "are needed (ARM_USERNAME, ARM_TOKEN)")
        if ":" in self.username or ":" in self.token:
            raise AuthenticationError("ARM Live user name and token must not contain ':'")

    def __str__(self) -> str:
        return f"ArmCredentials(username={self.username!r}, token={MASK})"

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.token,)


@dataclass(frozen=True)
class CdsCredentials:
    """CDS API URL and personal access token."""

    url: str
    key: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.key:
            raise AuthenticationError("CDS API key is empty (CDSAPI_KEY or ~/.cdsapirc)")

    def __str__(self) -> str:
        return f"CdsCredentials(url={self.url!r}, key={MASK})"

    @property
    def secrets(self) -> tuple[str, ...]:
        # an old-style "UID:KEY" key: the part after the colon is the secret too
        return tuple(s for s in {self.key, self.key.rpartition(":")[2]} if s)


def arm_credentials_from_env(env: Mapping[str, str] | None = None) -> ArmCredentials | None:
    """ARM credentials from ``ARM_USERNAME``/``ARM_TOKEN``, or None when neither is set."""
    env = os.environ if env is None else env
    user, token = env.get("ARM_USERNAME", ""), env.get("ARM_TOKEN", "")
    if not user and not token:
        return None
    creds = ArmCredentials(user, token)
    register_secrets(creds.secrets)
    return creds


def read_cdsapirc(path: str | os.PathLike[str]) -> dict[str, str]:
    """``url``/``key`` from a ``.cdsapirc`` file (``key: value`` lines)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        k, sep, v = line.partition(":")
        if sep and k.strip() in ("url", "key"):
            out[k.strip()] = v.strip()
    return out


def cds_credentials_from_env(env: Mapping[str, str] | None = None) -> CdsCredentials | None:
    """CDS credentials from ``CDSAPI_URL``/``CDSAPI_KEY``, else ``$CDSAPI_RC`` or ``~/.cdsapirc``.

    Returns None when no key is found anywhere.
    """
    env = os.environ if env is None else env
    url, key = env.get("CDSAPI_URL"), env.get("CDSAPI_KEY")
    if not key or not url:
        rc = Path(env.get("CDSAPI_RC", "~/.cdsapirc")).expanduser()
        if rc.is_file():
            try:
                conf = read_cdsapirc(rc)
            except (OSError, UnicodeDecodeError) as e:
                why = type(e).__name__
                raise AuthenticationError(f"{rc}: cannot read the CDS API configuration ({why})") from None
            key = key or conf.get("key")
            url = url or conf.get("url")
    if not key:
        return None
    creds = CdsCredentials(url or DEFAULT_CDS_URL, key)
    register_secrets(creds.secrets)
    return creds


# --------------------------------------------------------------------------- redaction

_lock = threading.Lock()
_secrets: set[str] = set()


def check_s3_credentials(store_root: str) -> str | None:
    """For an ``s3://`` store: where its AWS credentials come from (botocore's chain: environment,
    shared files, ``AWS_PROFILE``, container or instance role), without any request; ``None`` for a
    local store.  Raises :class:`AuthenticationError` naming the store and where credentials go
    (never a value) when the chain finds none."""
    if not store_root.startswith("s3://"):
        return None
    import botocore.session

    creds = botocore.session.get_session().get_credentials()
    if creds is None or not creds.access_key:
        raise AuthenticationError(
            f"the store {store_root} needs AWS credentials and none were found: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials, or run with an instance or pod "
            "role); on Kubernetes put them in the bzpipe-store secret (infra/k8s)")
    return str(getattr(creds, "method", "") or "aws")


def register_secrets(secrets: Iterable[str]) -> None:
    """Remember secrets so that :func:`redact` and the log filter scrub them everywhere."""
    with _lock:
        _secrets.update(s for s in secrets if s and len(s) >= 4)
    protect_logs()


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every registered secret (and any in ``secrets``) replaced by ``***``."""
    with _lock:
        known = set(_secrets)
    known.update(s for s in secrets if s)
    for s in sorted(known, key=len, reverse=True):
        if s in text:
            text = text.replace(s, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record whose message holds a registered secret (never drops it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = str(record.exc_info[1])
            if redact(exc_text) != exc_text:
                # drop the traceback: its exception message carries the secret
                record.msg = f"{record.msg} [{type(record.exc_info[1]).__name__}: {redact(exc_text)}]"
                record.exc_info, record.exc_text = None, None
        return True


_FILTER = RedactingFilter()


def protect_logs(extra_loggers: Iterable[str] = ()) -> None:
    """Install the redacting filter on the loggers that can see secrets (idempotent)."""
    for name in (*_GUARDED_LOGGERS, *extra_loggers):
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
