"""First start of a data directory: the signing key, tenant "default", and its first tokens.

The tokens are written once to DATA/tokens.json (0600) and printed once; only their hashes are
in the database. The admin token also has the "admin" scope: `edge tenant create`, `edge token
create|list|revoke` make more tenants and tokens (and replace these ones) through the API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge.control.records import TOKEN_SCOPES
from edge.control.signing import Signer, write_private_file
from edge.control.store import Store

DEFAULT_TENANT = "default"
TOKENS_FILE = "tokens.json"
KEY_FILE = "signing.key"


@dataclass(frozen=True)
class Bootstrap:
    signer: Signer
    tokens: dict[str, str] | None  # set only on the first start, when the tokens were made


def bootstrap(store: Store, data_dir: Path) -> Bootstrap:
    signer = Signer.load_or_create(data_dir / KEY_FILE)
    if store.tenant_names():
        return Bootstrap(signer, None)
    store.create_tenant(DEFAULT_TENANT)
    tokens = {
        "tenant": DEFAULT_TENANT,
        "admin": store.create_token(
            tenant=DEFAULT_TENANT, kind="api", scopes=TOKEN_SCOPES, label="default-admin"
        ),
        "node": store.create_token(tenant=None, kind="node", label="node"),
        "public_key": signer.public_key.hex(),
    }
    write_private_file(data_dir / TOKENS_FILE, (json.dumps(tokens, indent=2) + "\n").encode())
    return Bootstrap(signer, tokens)
