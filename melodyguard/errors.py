"""One exception tree for the whole library.

::

    MelodyGuardError
     ├── InvalidInputError            bad input from a caller; nothing was changed
     │    ├── EmptyInputError         zero bytes, or nothing to read
     │    ├── CorruptFileError        bytes that do not parse as the claimed format
     │    ├── UnsupportedFormatError  a format melodyguard does not read
     │    ├── InputTooLargeError      over the size, note or duration limit
     │    ├── NoMelodyError           legal file, but no pitched notes (silent, drums only)
     │    └── MelodyTooShortError     a melody with fewer notes than can be compared
     ├── ArtifactError                a model or index file that cannot be trusted
     │    ├── ModelVersionError       weights whose manifest does not match the code
     │    └── IndexVersionError       an index whose manifest does not match the catalogue
     ├── CatalogueError
     │    ├── DuplicateWorkError      the same source file (sha256) is already registered
     │    ├── WorkNotFoundError
     │    ├── EmptyCatalogueError     a check against a catalogue without works
     │    └── LawFitBusyError         another fit of the catalogue's chance law is under way
     └── ConfigError                  a setting that cannot work

The library never raises HTTP errors: only ``melodyguard.api`` maps these to status codes.
"""

from __future__ import annotations

__all__ = [
    "MelodyGuardError",
    "InvalidInputError",
    "EmptyInputError",
    "CorruptFileError",
    "UnsupportedFormatError",
    "InputTooLargeError",
    "NoMelodyError",
    "MelodyTooShortError",
    "ArtifactError",
    "ModelVersionError",
    "IndexVersionError",
    "CatalogueError",
    "DuplicateWorkError",
    "WorkNotFoundError",
    "EmptyCatalogueError",
    "LawFitBusyError",
    "ConfigError",
]


class MelodyGuardError(Exception):
    """Root of every error melodyguard raises on purpose."""


class InvalidInputError(MelodyGuardError, ValueError):
    """The caller's input cannot be used; nothing was changed."""


class EmptyInputError(InvalidInputError):
    """The input holds no bytes."""


class CorruptFileError(InvalidInputError):
    """The bytes do not parse as the format they claim to be."""


class UnsupportedFormatError(InvalidInputError):
    """The input is of a format melodyguard does not read."""


class InputTooLargeError(InvalidInputError):
    """The input is over a documented size, note-count or duration limit."""


class NoMelodyError(InvalidInputError):
    """The file is legal but holds no pitched melody (silent, or drums only)."""


class MelodyTooShortError(InvalidInputError):
    """The melody has fewer notes than are needed to compare it."""


class ArtifactError(MelodyGuardError):
    """A stored model or index cannot be trusted."""


class ModelVersionError(ArtifactError):
    """Model weights whose manifest or checksum does not match what the code expects."""


class IndexVersionError(ArtifactError):
    """An index whose manifest does not match the catalogue or the encoder."""


class CatalogueError(MelodyGuardError):
    """A catalogue operation that cannot be done."""


class DuplicateWorkError(CatalogueError):
    """The same source file is already registered."""

    def __init__(self, message: str, *, existing_id: int | None = None) -> None:
        super().__init__(message)
        self.existing_id = existing_id


class WorkNotFoundError(CatalogueError, KeyError):
    """No work with that id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "work not found"


class EmptyCatalogueError(CatalogueError):
    """Nothing to compare with: the catalogue holds no works. A check would say ``clear`` for
    every file, which a release gate must not mistake for a pass. ``path`` is the catalogue's
    directory (kept out of the message, which the HTTP API passes on to clients)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class LawFitBusyError(CatalogueError):
    """Another fit of the catalogue's chance law is under way (in a server worker, an ``add``,
    another thread); its law is stored when it finishes. ``holder`` is that fit's lease record
    (pid, host, since, progress)."""

    def __init__(self, message: str, *, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class ConfigError(MelodyGuardError):
    """A setting that cannot work."""
