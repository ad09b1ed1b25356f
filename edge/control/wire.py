"""How a version upload carries its metadata: the body is the component bytes, and the
`Edge-Metadata` header is base64url (unpadded) of JSON {"manifest": {...}, "message": "..."}.

A header keeps the body a plain stream of bytes (no multipart parser needed on either side);
the manifest is a small edge.toml, well under the header limit.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from edge.errors import BadRequest

METADATA_HEADER = "edge-metadata"


def encode_metadata(manifest: dict[str, Any], message: str) -> str:
    raw = json.dumps({"manifest": manifest, "message": message}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_metadata(raw: str) -> tuple[dict[str, Any], str]:
    if not raw:
        raise BadRequest("missing Edge-Metadata header (base64url JSON: manifest, message)")
    try:
        meta = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        raise BadRequest("Edge-Metadata is not base64url-encoded JSON") from None
    if not isinstance(meta, dict):
        raise BadRequest("Edge-Metadata must be a JSON object")
    manifest, message = meta.get("manifest"), meta.get("message", "")
    if not isinstance(manifest, dict) or not isinstance(message, str):
        raise BadRequest("Edge-Metadata needs manifest (object) and message (string)")
    return manifest, message[:1000]
