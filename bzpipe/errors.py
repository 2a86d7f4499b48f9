"""Exceptions raised at bzpipe's boundaries.

Every error about an input file names the file and the problem, so a user
reading a failed Prefect run knows which granule, netCDF or GRIB to look at.
"""

from __future__ import annotations

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
