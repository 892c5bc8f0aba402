"""Signatures of artifact directories with the OpenSSF model-signing library: key-based and offline
(an elliptic-curve key pair in PEM; no Sigstore, no network). docs/artifact.md, "Signing".

The signature (SIGNATURE, inside the artifact) is a DSSE envelope over an in-toto statement that lists
the sha256 of every other file of the directory, the manifest included. model-signing is optional (the
"sign" extra): it is imported only when signing or verifying is asked for, and its absence then raises
SigningUnavailableError.

Verification here checks the signature's bytes with the public key and returns the signed digests; the
loader (artifact.py) compares them with the sha256 of the bytes it read once and hands to ONNX Runtime,
rather than letting the library re-hash the directory: a file swapped between verification and use
cannot be run, because nothing is read twice.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from .errors import SignatureError, SigningUnavailableError

SIGNATURE = "model.sig"
MAX_SIGNATURE_BYTES = 1 << 20
INSTALL_HINT = "pip install 'depthscale[sign]'"


def _library():
    try:
        from model_signing import hashing
        from model_signing._signing import sign_ec_key, sign_sigstore_pb, signing
    except ImportError as e:
        raise SigningUnavailableError(f"signing and verifying need the model-signing package ({INSTALL_HINT}); "
                                      f"importing it failed: {e}") from None
    return hashing, signing, sign_ec_key, sign_sigstore_pb


def signer(private_key) -> Callable[[Path], None]:
    """Load the elliptic-curve private key (PEM, unencrypted; P-256, P-384 or P-521) now, so a bad key
    fails before any work. Returns sign(directory), which writes SIGNATURE into the directory, covering
    every file in it (there must be no symlink). Raises SigningUnavailableError or SignatureError."""
    hashing, signing, sign_ec_key, _ = _library()
    try:
        key = sign_ec_key.Signer(Path(private_key))
    except Exception as e:  # noqa: BLE001 - cryptography raises many types; all mean "unusable key"
        raise SignatureError(f"cannot sign with {private_key}: {_reason(e)}") from None

    def sign(directory: Path) -> None:
        directory = Path(directory)
        files = hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False).hash(directory)
        key.sign(signing.Payload(files)).write(directory / SIGNATURE)

    return sign


def public_key(path):
    """The verifier of an elliptic-curve public key (PEM). Raises SigningUnavailableError or SignatureError."""
    _, _, sign_ec_key, _ = _library()
    try:
        return sign_ec_key.Verifier(Path(path))
    except Exception as e:  # noqa: BLE001 - as above
        raise SignatureError(f"cannot verify with {path}: {_reason(e)}") from None


def signed_digests(signature: bytes, verifier, where: str) -> dict[str, str]:
    """{path: sha256 hex} that `signature` (the bytes of SIGNATURE) signs, once the signature verifies
    with `verifier` (public_key()). Raises SignatureError."""
    _, _, _, sign_sigstore_pb = _library()
    try:
        bundle = sign_sigstore_pb.bundle_pb.Bundle.from_json(signature)
        signed = verifier.verify(sign_sigstore_pb.Signature(bundle))
    except Exception as e:  # noqa: BLE001 - a malformed or forged signature raises many types
        raise SignatureError(f"{where}: {SIGNATURE} does not verify with the given public key "
                             f"(signed with another key, or altered): {_reason(e)}") from None
    digests = {}
    for resource in signed.resource_descriptors():
        if resource.digest.algorithm != "sha256":
            raise SignatureError(f"{where}: {SIGNATURE} signs {resource.identifier} with "
                                 f"{resource.digest.algorithm}, not sha256")
        digests[resource.identifier] = resource.digest.digest_value.hex()
    return digests


def check_signed(name: str, content: bytes, digests: dict[str, str], where: str) -> None:
    """The bytes read for `name` are the bytes signed. Raises SignatureError."""
    if name not in digests:
        raise SignatureError(f"{where}: {name} is not covered by {SIGNATURE} (added after signing?)")
    if hashlib.sha256(content).hexdigest() != digests[name]:
        raise SignatureError(f"{where}: {name} is not the file that was signed (modified after signing)")


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
