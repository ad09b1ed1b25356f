"""`edge control`: open the data directory, bootstrap it if new, serve the API on Hypercorn."""

from __future__ import annotations

import sys
from pathlib import Path

from edge.control.api import ControlSettings, create_app
from edge.control.bootstrap import TOKENS_FILE, bootstrap
from edge.control.store import Store
from edge.node.server import run


async def run_control(
    data_dir: Path, listen: str, settings: ControlSettings | None = None
) -> None:
    # The directory holds the signing key and the first tokens: owner only.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with Store(data_dir) as store:
        boot = bootstrap(store, data_dir)
        if boot.tokens is not None:
            print(
                f"edge control: new data directory {data_dir}; tokens (shown once, also in "
                f"{data_dir / TOKENS_FILE}, mode 0600):\n"
                f"  admin token (tenant default): {boot.tokens['admin']}\n"
                f"  node token:                   {boot.tokens['node']}",
                file=sys.stderr,
                flush=True,
            )
        app = create_app(store, boot.signer, settings)

        async def ready() -> None:
            print(
                f"edge control at http://{listen}/ revision {store.revision()} "
                f"public key {boot.signer.public_key.hex()}",
                file=sys.stderr,
                flush=True,
            )

        await run(app, listen, on_ready=ready)
