"""Exceptions of the runtime. Every artifact problem is an ArtifactError subclass of its own."""


class ArtifactError(Exception):
    """The artifact directory cannot be used."""


class MissingFileError(ArtifactError):
    """A file the manifest lists (or the manifest itself) is not there."""


class HashMismatchError(ArtifactError):
    """A file's sha256 differs from the manifest's."""


class ParityFailedError(ArtifactError):
    """The artifact's parity gate failed at export; load it only with allow_failed=True."""


class UnsupportedFormatError(ArtifactError):
    """The manifest is unreadable, or of a format or version this runtime does not read."""


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says what was expected and what was found."""
