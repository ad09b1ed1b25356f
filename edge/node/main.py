"""`edge node --config node.toml`: listen at once, compile every function, then become ready."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from edge.node.app import create_app
from edge.node.config import load_node_config
from edge.node.logs import LogWriter
from edge.node.runtime import NodeRuntime, Unavailable
from edge.node.server import run


async def run_node(config_path: Path) -> None:
    config = load_node_config(config_path)
    runtime = NodeRuntime(config, LogWriter("json"))
    app = create_app(runtime)

    async def load() -> None:
        deployment = await anyio.to_thread.run_sync(runtime.load_configured)
        for name, fn in sorted(deployment.functions.items()):
            if isinstance(fn, Unavailable):
                print(f"edge node: {name}: {fn.error.message}", file=sys.stderr, flush=True)
        print(
            f"edge node {config.node_id} ({config.region}) ready at http://{config.listen}/ "
            f"serving {len(deployment.functions)} function(s)",
            file=sys.stderr,
            flush=True,
        )

    try:
        await run(app, config.listen, on_ready=load)
    finally:
        runtime.close()
