"""Control-plane errors. Each maps to an HTTP status in one place (`edge.control.api`)."""

from __future__ import annotations

from edge.errors import BadRequest, EdgeError


class Unauthorized(EdgeError):
    """No token, or a token we do not know. Never says which."""

    status = 401
    reason = "unauthorized"


class Forbidden(EdgeError):
    """A known token without the scope (or kind) the call needs."""

    status = 403
    reason = "forbidden"


class NotFound(EdgeError):
    """Also the answer for another tenant's function, so its existence is not revealed."""

    status = 404
    reason = "not_found"


class Conflict(EdgeError):
    """The request is well formed but contradicts the current state (taken route, no canary)."""

    status = 409
    reason = "conflict"


class NodeAlive(Conflict):
    """`edge node forget` of a node that still reports or passes its health check."""

    reason = "node_alive"


class SecretsKeyInUse(Conflict):
    """An online rotation to the key the control plane seals with already."""

    reason = "secrets_key_in_use"


class RotationRunning(Conflict):
    """An online rotation asked for while another one runs on the same control plane."""

    reason = "rotation_running"


class PayloadTooLarge(EdgeError):
    status = 413
    reason = "payload_too_large"


class SnapshotRejected(EdgeError):
    """A snapshot or version a node must not apply: unsigned, tampered, wrong key, malformed."""

    status = 502
    reason = "snapshot_rejected"


class BlobMismatch(SnapshotRejected):
    """Component bytes whose sha256 or size differ from the signed version."""

    reason = "blob_mismatch"


class ControlUnreachable(EdgeError):
    """The CLI could not talk to the control plane at all."""

    status = 503
    reason = "control_unreachable"


class RemoteError(EdgeError):
    """An error answer from the control plane, as the CLI received it."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class BadConfigKey(BadRequest):
    """A deploy-time configuration key that is not a valid name."""

    reason = "bad_config_key"


class BadConfigValue(BadRequest):
    """A deploy-time configuration value that is not a string (or null, to remove it)."""

    reason = "bad_config_value"


class ConfigValueTooLarge(BadRequest):
    reason = "config_value_too_large"


class TooManyConfigKeys(BadRequest):
    reason = "too_many_config_keys"


class BadSecretsKey(BadRequest):
    """A key file named for an online rotation that holds no key, or cannot be read or made."""

    reason = "bad_secrets_key"


class KeyFileNotSaved(EdgeError):
    """An online rotation committed, but the control plane could not write the new key over its
    key file (the machine's fault): it seals with the new key, and must restart with it."""

    reason = "key_file_not_saved"


class SecretUnavailable(EdgeError):
    """A node cannot open a function's sealed secret value (edge.control.sealing): it has no
    secrets key, another key, or the value was changed. That function answers this; the
    operator's fault (the key's distribution), so no retry by the client helps soon."""

    status = 503
    reason = "secret_unavailable"
