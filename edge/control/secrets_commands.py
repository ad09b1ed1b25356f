"""`edge rotate-secrets-key`: seal every secret config value again under a new secrets key.

Run on the control plane's machine with the control plane stopped (it keeps its key in memory,
and would go on sealing with the old one). The steps, with nodes serving throughout:

1. stop the control plane; `edge rotate-secrets-key --data DIR --new-key NEW` (makes NEW,
   0600, if it does not exist) re-seals everything in the database in one transaction and
   writes one "config" revision per function that has a secret;
2. give every node NEW as `secrets_key_file` and the old key as `previous_secrets_key_file`
   (running nodes reread them, edge.node.keyfiles; what they kept is still under the old key);
3. start the control plane with `--secrets-key NEW` (or with NEW moved to DATA/secrets.key);
   nodes fetch the new revisions;
4. once `edge status` shows every node at the last of them, drop `previous_secrets_key_file`
   and the old key everywhere.

`--online` asks the running control plane to do it instead (edge.control.rotation), nodes
given NEW beforehand as `previous_secrets_key_file`; the README has both procedures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from edge.cli_output import JsonOption, Output
from edge.control.client import DEFAULT_URL
from edge.control.commands import ControlUrl, Token, _client
from edge.control.datalock import hold
from edge.control.rotation import reseal_json
from edge.control.sealing import KEY_FILE, SecretsKey
from edge.control.store import DB_NAME, Store
from edge.errors import ConfigError, UsageError


def rotate_secrets_key(
    new_key: Annotated[Path, typer.Option(
        "--new-key", help="the new secrets key file (made if it does not exist)")],
    data: Annotated[Path | None, typer.Option(
        "--data", help="the control plane's data directory (offline)")] = None,
    secrets_key: Annotated[Path | None, typer.Option(
        "--secrets-key", help="the current key file (offline; default DATA/secrets.key)")] = None,
    online: Annotated[bool, typer.Option(
        "--online", help="ask the running control plane (admin token); NEW is a path on its "
        "machine")] = False,
    control: ControlUrl = DEFAULT_URL,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Seal every secret config value again under a new key: offline (--data, control plane
    stopped) or --online (control plane running).

    Current values and those the revision log keeps; each function with a secret gets a
    "config" revision so nodes fetch its values under the new key. Offline: then start the
    control plane with --secrets-key NEW; nodes need both keys until they applied those
    revisions. Online: give every node NEW as previous_secrets_key_file first; the control
    plane seals with NEW at once and writes it over its key file (the old key kept beside it
    as <file>.previous)."""
    with Output(as_json) as out:
        if online:
            if data is not None or secrets_key is not None:
                raise UsageError("--online asks the running control plane, which knows its "
                                 "data directory and key: no --data or --secrets-key")
            with _client(control, token) as client:
                # A relative NEW is taken from here: the control plane's directory is not ours.
                answer = client.rotate_secrets_key(os.path.abspath(new_key))
            then = (f"once `edge status` shows every node at revision {_last(answer)}, "
                    if answer["revisions"] else "")
            out.result(answer, (
                f"{_summary(answer)} The control plane seals with it now and keeps it in "
                f"{answer['key_file']} (the old key in {answer['previous_key_file']}). Next: "
                f"{then}on every node move the new key from previous_secrets_key_file over "
                "secrets_key_file (the old key goes)."))
            return
        if data is None:
            raise UsageError("give --data DIR (control plane stopped) or --online")
        if not (data / DB_NAME).is_file():
            raise ConfigError(f"{data} holds no control plane database ({DB_NAME})")
        with hold(data, "edge rotate-secrets-key"):  # before any key file is made
            current = SecretsKey.load(secrets_key or data / KEY_FILE)
            new = SecretsKey.load_or_create(new_key)
            if new.key_id == current.key_id:
                raise UsageError(f"{new_key} is the current key ({current.key_id})")
            with Store(data, secrets_key=current) as store:
                result = store.reseal_secrets(new, "rotate-secrets-key")
        done = reseal_json(result, current.key_id, new.key_id, new_key)
        out.result(
            done,
            f"{_summary(done)} Next: give nodes {new_key} as secrets_key_file "
            f"and the old key ({current.key_id}) as previous_secrets_key_file, start the "
            f"control plane with --secrets-key {new_key}, and drop the old key once every "
            "node applied the new revisions.",
        )


def _last(done: dict[str, Any]) -> int:
    return int(done["revisions"][-1])


def _summary(done: dict[str, Any]) -> str:
    last = f" (last revision {_last(done)})" if done["revisions"] else ""
    return (f"re-sealed {done['values']} secret value(s) of {len(done['functions'])} "
            f"function(s) under key {done['new_key_id']}{last}.")


def register(app: typer.Typer) -> None:
    app.command("rotate-secrets-key")(rotate_secrets_key)
