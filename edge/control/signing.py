"""Ed25519 keys and signatures for versions and snapshots.

The control plane makes its key at first start (`data/signing.key`, PKCS#8 PEM, mode 0600) and
nodes are configured with the public key (raw 32 bytes, shown as hex). Ed25519 signatures are
deterministic, so signing the same bytes twice gives the same signature: snapshots and version
signatures can be rebuilt at any time instead of stored.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def canonical_cbor(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def key_id(public_key: bytes) -> str:
    """Names a key without revealing anything: the first 8 bytes of its sha256, as hex."""
    return hashlib.sha256(public_key).digest()[:8].hex()


def version_message(
    function: str, number: int, sha256: str, size: int, manifest: dict[str, Any]
) -> bytes:
    """The exact bytes a version signature covers."""
    return canonical_cbor(
        {"function": function, "number": number, "sha256": sha256, "size": size,
         "manifest": manifest}
    )


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """Reads the key at `path`, creating it (0600, atomically) if it does not exist yet."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path}: not an Ed25519 private key")
            return cls(key)
        signer = cls.generate()
        pem = signer._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private_file(path, pem)
        return signer

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def sign_version(
        self, function: str, number: int, sha256: str, size: int, manifest: dict[str, Any]
    ) -> bytes:
        return self.sign(version_message(function, number, sha256, size, manifest))


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def write_private_file(path: Path, data: bytes) -> None:
    """Creates `path` with mode 0600 from the start (no window where it is world-readable),
    via a temporary file and rename so a crash never leaves half a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
