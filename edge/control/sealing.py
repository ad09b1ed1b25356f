"""Secret config values sealed at rest: AES-256-GCM under the fleet's secrets key.

The control plane seals a secret value (`edge config set --secret`) before it writes it
anywhere: its database and revision log hold only the sealed form, and so do the signed
snapshots and the copies nodes keep on disk. Nodes hold the same key file and open the values
in memory when they build what they serve. Whoever has the database, a snapshot or a backup
but not the key has no secret.

Sealed value (bytes; in the database and revision log as text: "sealed:1:" + base64url):

    version (1 byte, 1) | key id (8 bytes) | nonce (12 bytes, random) | ciphertext + tag (16)

The associated data is the header (version, key id) and canonical CBOR of ["edge-secret",
"<tenant>/<function>", key]: a sealed value copied to another key, function or tenant, or with
its header changed, does not open. The key id (the first 8 bytes of sha256(key), as in
edge.control.signing) names the key in errors, so a node with another key says which one the
value needs instead of failing to decrypt. The key file holds the key as 64 hex digits.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.control.errors import SecretUnavailable
from edge.control.signing import canonical_cbor, key_id, write_private_file
from edge.errors import ConfigError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
VERSION = 1
KEY_ID_BYTES = 8
HEADER_BYTES = 1 + KEY_ID_BYTES
OVERHEAD_BYTES = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
TEXT_PREFIX = f"sealed:{VERSION}:"
KEY_FILE = "secrets.key"  # in the control plane's data directory unless configured elsewhere


class SecretsKey:
    """The fleet's secrets key: seals on the control plane, opens on nodes."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a secrets key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self._key = key  # for `save` alone
        self.key_id = key_id(key)
        self._raw_id = bytes.fromhex(self.key_id)

    @classmethod
    def generate(cls) -> SecretsKey:
        return cls(AESGCM.generate_key(bit_length=KEY_BYTES * 8))

    @classmethod
    def load(cls, path: Path) -> SecretsKey:
        """The key in `path` (64 hex digits); ConfigError naming the file otherwise."""
        try:
            text = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"secrets key file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            text = ""
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise ConfigError(
                f"secrets key file {path} must hold {KEY_BYTES * 2} hex digits "
                f"({KEY_BYTES} random bytes); the control plane makes one at first start"
            ) from None

    @classmethod
    def load_or_create(cls, path: Path) -> SecretsKey:
        """Reads the key at `path`, creating it (0600, atomically) if it does not exist yet."""
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        key.save(path)
        return key

    def save(self, path: Path) -> None:
        """Writes the key to `path` as `load` reads it: 0600, atomically (a file there is
        replaced whole, never seen half written)."""
        write_private_file(path, (self._key.hex() + "\n").encode())

    def seal(self, value: str, function: str, key: str) -> bytes:
        header = bytes([VERSION]) + self._raw_id
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._aead.encrypt(
            nonce, value.encode(), _associated(header, function, key)
        )

    def open(self, sealed: bytes, function: str, key: str) -> str:
        """The value; SecretUnavailable (naming the key id it needs) when it is not sealed for
        this function and key under this key, or was changed."""
        header, nonce, body = _parts(sealed, function, key)
        if header[1:] != self._raw_id:
            raise SecretUnavailable(
                f"config value {key!r} of {function} is sealed with secrets key "
                f"{header[1:].hex()}; this node has key {self.key_id}"
            )
        try:
            plain = self._aead.decrypt(nonce, body, _associated(header, function, key))
            return plain.decode()
        except (InvalidTag, UnicodeDecodeError):
            raise SecretUnavailable(
                f"config value {key!r} of {function} does not open with secrets key "
                f"{self.key_id}: it was changed, or sealed for another function or key"
            ) from None


class Keyring:
    """The keys a node can open values with, by key id: its current one and, while a rotation
    runs, the previous one (edge.control.secrets_commands)."""

    def __init__(self, keys: Iterable[SecretsKey] = ()) -> None:
        self._keys = {k.key_id: k for k in keys}

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def open(self, sealed: bytes, function: str, key: str) -> str:
        header, _, _ = _parts(sealed, function, key)
        kid = header[1:].hex()
        found = self._keys.get(kid)
        if found is not None:
            return found.open(sealed, function, key)
        has = (f"key{'s' if len(self._keys) > 1 else ''} {', '.join(self._keys)}"
               if self._keys else "no secrets key (set [control] secrets_key_file)")
        raise SecretUnavailable(
            f"config value {key!r} of {function} is sealed with secrets key {kid}; "
            f"this node has {has}"
        )


def sealed_key_id(sealed: bytes) -> str:
    """The id of the key `sealed` needs ("" when it is no sealed value)."""
    if len(sealed) < OVERHEAD_BYTES or sealed[0] != VERSION:
        return ""
    return sealed[1:HEADER_BYTES].hex()


def to_text(sealed: bytes) -> str:
    return TEXT_PREFIX + base64.urlsafe_b64encode(sealed).decode()


def from_text(text: str) -> bytes:
    """The sealed bytes of `to_text`; b"" (which opens as nothing: a typed error on the node)
    for anything else, so a damaged row never puts what it holds into a snapshot."""
    if not text.startswith(TEXT_PREFIX):
        return b""
    try:
        return base64.urlsafe_b64decode(text[len(TEXT_PREFIX):].encode())
    except (binascii.Error, ValueError):
        return b""


def _parts(sealed: bytes, function: str, key: str) -> tuple[bytes, bytes, bytes]:
    if len(sealed) < OVERHEAD_BYTES or sealed[0] != VERSION:
        raise SecretUnavailable(f"config value {key!r} of {function} is not a sealed value")
    return (sealed[:HEADER_BYTES], sealed[HEADER_BYTES:HEADER_BYTES + NONCE_BYTES],
            sealed[HEADER_BYTES + NONCE_BYTES:])


def _associated(header: bytes, function: str, key: str) -> bytes:
    return header + canonical_cbor(["edge-secret", function, key])
