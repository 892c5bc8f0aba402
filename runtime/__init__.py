"""depthscale_runtime: runs an exported DepthScale artifact without torch.

    import depthscale_runtime
    rt = depthscale_runtime.load("demo-onnx")           # verifies manifest and hashes
    rt = depthscale_runtime.load("demo-onnx", verify="pub.pem")   # and its signature (the "sign" extra)
    out = rt.run([0, 1, 2, 2, 1], max_iters=16, tol=0.003)
    out.logits, out.iterations
    gen = rt.generate([0, 1, 2], max_new_tokens=8)      # prefill, then one decode step per token
    gen.tokens, gen.iterations
"""

from .artifact import Artifact, open_artifact
from .errors import (ArtifactError, BackendUnavailableError, DecodingUnavailableError, HashMismatchError,
                     InvalidConfigError, InvalidGraphError, InvalidManifestError, MissingFileError, ParityFailedError,
                     SignatureError, SigningUnavailableError, UnsafePathError, UnsupportedFormatError)
from .generate import GenerationResult, GenerationStep
from .runtime import RunResult, Runtime, load

__version__ = "0.1.0"

__all__ = ["Artifact", "ArtifactError", "BackendUnavailableError", "DecodingUnavailableError", "GenerationResult",
           "GenerationStep", "HashMismatchError", "InvalidConfigError", "InvalidGraphError", "InvalidManifestError",
           "MissingFileError", "ParityFailedError", "RunResult", "Runtime", "SignatureError",
           "SigningUnavailableError", "UnsafePathError", "UnsupportedFormatError",
           "__version__", "load", "open_artifact"]
