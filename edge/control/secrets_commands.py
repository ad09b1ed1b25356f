"""`edge rotate-secrets-key`: seal every secret config value again under a new secrets key.

Run on the control plane's machine with the control plane stopped (it keeps its key in memory,
and would go on sealing with the old one). The steps, with nodes serving throughout:

1. stop the control plane; `edge rotate-secrets-key --data DIR --new-key NEW` (makes NEW,
   0600, if it does not exist) re-seals everything in the database in one transaction and
   writes one "config" revision per function that has a secret;
2. give every node NEW as `secrets_key_file` and the old key as `previous_secrets_key_file`,
   and restart them (what they kept on disk is still under the old key);
3. start the control plane with `--secrets-key NEW` (or with NEW moved to DATA/secrets.key);
   nodes fetch the new revisions;
4. once `edge status` shows every node at the last of them, drop `previous_secrets_key_file`
   and the old key everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.cli_output import JsonOption, Output
from edge.control.datalock import hold
from edge.control.sealing import KEY_FILE, SecretsKey
from edge.control.store import DB_NAME, Store
from edge.errors import ConfigError, UsageError


def rotate_secrets_key(
    data: Annotated[Path, typer.Option("--data", help="the control plane's data directory")],
    new_key: Annotated[Path, typer.Option(
        "--new-key", help="the new secrets key file (made if it does not exist)")],
    secrets_key: Annotated[Path | None, typer.Option(
        "--secrets-key", help="the current key file (default DATA/secrets.key)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Seal every secret config value again under a new key (control plane stopped).

    Current values and those the revision log keeps; each function with a secret gets a
    "config" revision so nodes fetch its values under the new key. Then start the control
    plane with --secrets-key NEW; nodes need both keys until they applied those revisions."""
    with Output(as_json) as out:
        if not (data / DB_NAME).is_file():
            raise ConfigError(f"{data} holds no control plane database ({DB_NAME})")
        with hold(data, "edge rotate-secrets-key"):  # before any key file is made
            current = SecretsKey.load(secrets_key or data / KEY_FILE)
            new = SecretsKey.load_or_create(new_key)
            if new.key_id == current.key_id:
                raise UsageError(f"{new_key} is the current key ({current.key_id})")
            with Store(data, secrets_key=current) as store:
                result = store.reseal_secrets(new, "rotate-secrets-key")
        last = f" (last revision {result.revisions[-1]})" if result.revisions else ""
        out.result(
            {"values": result.values, "functions": list(result.functions),
             "revisions": list(result.revisions), "old_key_id": current.key_id,
             "new_key_id": new.key_id, "new_key_file": str(new_key)},
            f"re-sealed {result.values} secret value(s) of {len(result.functions)} function(s) "
            f"under key {new.key_id}{last}. Next: give nodes {new_key} as secrets_key_file "
            f"and the old key ({current.key_id}) as previous_secrets_key_file, start the "
            f"control plane with --secrets-key {new_key}, and drop the old key once every "
            "node applied the new revisions.",
        )


def register(app: typer.Typer) -> None:
    app.command("rotate-secrets-key")(rotate_secrets_key)
