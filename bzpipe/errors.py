"""Exceptions raised at bzpipe's boundaries.

Every error about an input file names the file and the problem, so a user
reading a failed Prefect run knows which granule, netCDF or GRIB to look at.
"""

from __future__ import annotations

import errno
from pathlib import PurePath


class BzpipeError(Exception):
    """Base class of every error bzpipe raises on purpose."""


class ConfigError(BzpipeError, ValueError):
    """A configuration file or override is invalid."""


class InputFileError(BzpipeError):
    """An input file cannot be used; ``path`` names it and ``problem`` says why."""

    def __init__(self, path: str | PurePath, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CorruptFileError(InputFileError):
    """The file is truncated, not of the expected format, or cannot be decoded."""


class ImplausibleDataError(CorruptFileError):
    """The file decodes, but a physical field holds values no real instrument produces (e.g. bin
    heights out of order): the bytes were most likely damaged."""


class MissingVariableError(InputFileError):
    """A variable the reader needs is not in the file."""


class UnitsError(InputFileError):
    """A variable has units the reader does not know how to convert."""


class EmptyDataError(InputFileError):
    """The file holds only missing / fill values for a variable that is needed."""


class WrongReleaseError(InputFileError):
    """The file is of another product release than the one expected (e.g. CloudSat R04 vs R05)."""


class StoreError(BzpipeError):
    """Reading from or writing to the store failed (permissions, disk full, ...)."""


class DownloadError(BzpipeError):
    """A remote service failed to deliver a file."""


class AuthenticationError(DownloadError):
    """A remote service rejected the credentials (not retried)."""


class DatasetMismatchError(BzpipeError):
    """The dataset differs from the one a model was trained on (rebuilt with another split or
    normalization, or another version): scores on it would not be a held-out test."""

    retryable = False


class UnfinishedModelError(StoreError):
    """The model a stage would apply belongs to a training run that has not finished (no
    ``final.json`` matching its checkpoint): it may still change, so it is not applied."""


# --------------------------------------------------------------------------- retry policy

#: OS errors a retry cannot fix: a missing path, a full disk, a refused permission, a read-only store
PERMANENT_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ENOSPC,
                              errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
#: errors of the AWS SDK that mean the credentials are missing or refused (matched by class name, so
#: botocore need not be imported)
CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError",
                               "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_BUGS = (TypeError, AttributeError, NameError, NotImplementedError, AssertionError, IndexError, KeyError)


def is_credentials_error(exc: BaseException) -> bool:
    return any(c.__name__ in CREDENTIAL_ERRORS for c in type(exc).__mro__)


def is_retryable(exc: BaseException, *, input_refetched: bool = False) -> bool:
    """Whether retrying the step that raised ``exc`` can help.

    Never for rejected credentials, a bad config, a model still training, a missing path, a full or
    read-only store, or a programming error.  A bad input file (:class:`InputFileError`, or a
    ``ValueError`` from decoding it) is permanent too, unless the retry fetches the file again
    (``input_refetched``: a download cut short may come back whole).  A :class:`StoreError` is
    transient only when its cause is (a dropped connection); one without a cause is a state bzpipe
    found (a dataset missing or half-written, a version built from other inputs) and is permanent.
    Errors that say ``retryable = False`` are permanent; anything else (network trouble, a busy
    server, a worker lost) is retried.
    """
    if isinstance(exc, (AuthenticationError, ConfigError, UnfinishedModelError)) or is_credentials_error(exc):
        return False
    if isinstance(exc, InputFileError):
        return input_refetched
    if isinstance(exc, StoreError):
        cause = exc.__cause__
        return cause is not None and is_retryable(cause, input_refetched=input_refetched)
    if isinstance(exc, OSError):
        return exc.errno not in PERMANENT_ERRNOS
    if isinstance(exc, _BUGS) or (isinstance(exc, ValueError) and not input_refetched):
        return False
    return bool(getattr(exc, "retryable", True))
