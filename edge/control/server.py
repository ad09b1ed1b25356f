"""`edge control`: open the data directory, bootstrap it if new, serve the API on Hypercorn."""

from __future__ import annotations

from pathlib import Path

from edge.cli_output import Output
from edge.config.listen import check_listen
from edge.control.api import ControlSettings, create_app
from edge.control.bootstrap import TOKENS_FILE, bootstrap
from edge.control.store import Store
from edge.node.server import run


async def run_control(
    data_dir: Path, listen: str, settings: ControlSettings | None = None,
    out: Output | None = None,
) -> None:
    say = out or Output()
    check_listen(listen, "--listen", optional=False)  # before a new data directory is made
    # The directory holds the signing key and the first tokens: owner only.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with Store(data_dir) as store:
        boot = bootstrap(store, data_dir)
        if boot.tokens is not None:
            say.event(
                "bootstrapped",
                f"edge control: new data directory {data_dir}; tokens (shown once, also in "
                f"{data_dir / TOKENS_FILE}, mode 0600):\n"
                f"  admin token (tenant default): {boot.tokens['admin']}\n"
                f"  node token:                   {boot.tokens['node']}",
                data_dir=str(data_dir), tokens_file=str(data_dir / TOKENS_FILE),
                admin_token=boot.tokens["admin"], node_token=boot.tokens["node"],
            )
        app = create_app(store, boot.signer, settings)

        async def ready() -> None:
            key = boot.signer.public_key.hex()
            say.event(
                "ready",
                f"edge control at http://{listen}/ revision {store.revision()} public key {key}",
                url=f"http://{listen}/", revision=store.revision(), public_key=key,
            )

        await run(app, listen, on_ready=ready)
