"""`edge control`: open the data directory, bootstrap it if new, serve the API on Hypercorn."""

from __future__ import annotations

from pathlib import Path

from edge.cli_output import Output
from edge.config.listen import check_listen
from edge.control.api import ControlSettings, create_app
from edge.control.bootstrap import TOKENS_FILE, bootstrap
from edge.control.datalock import hold
from edge.control.sealing import KEY_FILE, SecretsKey
from edge.control.store import Store
from edge.node.server import run


async def run_control(
    data_dir: Path, listen: str, settings: ControlSettings | None = None,
    out: Output | None = None, secrets_key: Path | None = None,
) -> None:
    """`secrets_key`: the secrets key file; by default DATA/secrets.key, made if absent (a
    file named here must exist: a typo must not start a new key)."""
    say = out or Output()
    check_listen(listen, "--listen", optional=False)  # before a new data directory is made
    # The directory holds the signing and secrets keys and the first tokens: owner only.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = secrets_key or data_dir / KEY_FILE
    with hold(data_dir, "edge control"):
        await _serve(data_dir, listen, settings, say, key_file, secrets_key is not None)


async def _serve(
    data_dir: Path, listen: str, settings: ControlSettings | None, say: Output,
    key_file: Path, key_named: bool,
) -> None:
    key = SecretsKey.load(key_file) if key_named else SecretsKey.load_or_create(key_file)
    with Store(data_dir, secrets_key=key) as store:
        for other, count in store.foreign_secrets().items():
            say.event(
                "secrets_key_mismatch",
                f"edge control: warning: {count} secret config value(s) are sealed with "
                f"secrets key {other}, not with {key_file} (key {key.key_id}); nodes need key "
                f"{other} to open them: restore that key file, or set them again "
                "(edge config set NAME KEY=VALUE --secret)",
                key_id=other, values=count, current_key_id=key.key_id,
            )
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
        app = create_app(store, boot.signer, settings, secrets_key_file=key_file)

        async def ready() -> None:
            public = boot.signer.public_key.hex()
            say.event(
                "ready",
                f"edge control at http://{listen}/ revision {store.revision()} public key "
                f"{public} secrets key {key.key_id} ({key_file})",
                url=f"http://{listen}/", revision=store.revision(), public_key=public,
                secrets_key_id=key.key_id, secrets_key_file=str(key_file),
            )

        await run(app, listen, on_ready=ready)
