"""Many follower nodes inside one process, for bench.convergence's in-process mode.

Each node is what `edge node` runs with a [control] table — a NodeRuntime, the node's ASGI app
served by Hypercorn on its own 127.0.0.1 port, and a Follower long-polling the control plane —
except that all nodes of this process share one SandboxEngine: one wasmtime engine per node
would reserve a pooling allocator (and an epoch ticker) per node, which is what separate
processes are for. Stops on SIGTERM/SIGINT.

    .venv/bin/python -m bench.convergence_nodes SPEC.json

SPEC: {"control": {"url", "token", "public_key"}, "cache_dir": str,
       "nodes": [{"id", "region", "port", "state_dir"}, ...]}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve

from edge.node.app import create_app
from edge.node.config import ControlConfig, NodeConfig
from edge.node.follower import ControlSettings, Follower
from edge.node.logs import LogWriter
from edge.node.persisted import NodeState
from edge.node.runtime import NodeRuntime
from edge.node.server import hypercorn_config
from edge.sandbox.engine import EngineSettings, SandboxEngine


def teller(node_id: str) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(f"{node_id}: {message}", file=sys.stderr, flush=True)

    return say


async def serve_nodes(spec: dict[str, Any]) -> None:
    control = spec["control"]
    public_key = bytes.fromhex(control["public_key"])
    cache_dir = Path(spec["cache_dir"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    engine = SandboxEngine(EngineSettings())
    tasks: list[asyncio.Task[None]] = []
    try:
        for node in spec["nodes"]:
            state_dir = Path(node["state_dir"])
            config = NodeConfig(
                node_id=node["id"],
                region=node["region"],
                listen=f"127.0.0.1:{node['port']}",
                cache_dir=cache_dir,
                control=ControlConfig(control["url"], control["token"], public_key, state_dir),
            )
            runtime = NodeRuntime(config, LogWriter("json"), engine)
            # Hypercorn's ASGI types are stricter than the app's plain-dict ones (as in
            # edge.node.server, which takes the app as Any).
            app: Any = create_app(runtime)
            server = serve(app, hypercorn_config(config.listen), shutdown_trigger=stop.wait)
            tasks.append(asyncio.create_task(server))
            follower = Follower(
                runtime,
                ControlSettings(control["url"], control["token"], public_key),
                NodeState(state_dir),
                say=teller(node["id"]),
            )
            tasks.append(asyncio.create_task(follower.run()))
        print(f"serving {len(spec['nodes'])} nodes", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        engine.close()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(serve_nodes(spec))


if __name__ == "__main__":
    main()
