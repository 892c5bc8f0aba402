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


class UnsafePathError(ArtifactError):
    """A path the manifest lists is absolute, not normalised, outside the artifact, a symlink, or not a
    regular file."""


class InvalidManifestError(UnsupportedFormatError):
    """A manifest field has the wrong type or range, or disagrees with config.json or a graph."""


class InvalidConfigError(ArtifactError):
    """The artifact's config.json is not a valid model config."""


class InvalidGraphError(ArtifactError):
    """A graph file is not a readable ONNX model of the expected interface, references data the manifest
    does not list, or ONNX Runtime refuses it."""


class SignatureError(ArtifactError):
    """Loading with verify=: the artifact has no signature, the signature does not verify with the given
    public key (another key, or altered), or the files are not exactly the files signed (one changed,
    added or removed). Also: a key that cannot be used."""


class SigningUnavailableError(SignatureError):
    """Signing or verifying was asked for, but the optional model-signing package is not installed."""


class DecodingUnavailableError(RuntimeError):
    """The artifact (or the backend) cannot decode incrementally; the message says why."""
