"""`edge node`: listen at once, then serve configured functions or follow a control plane."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from dataclasses import replace
from pathlib import Path

import anyio

from edge.cli_output import Output
from edge.config.listen import check_listen
from edge.config.toml_fields import Table
from edge.node.app import create_app
from edge.node.config import (
    ControlConfig,
    NodeConfig,
    load_node_config,
    parse_control,
    parse_node_config,
)
from edge.node.follower import ControlSettings, Follower
from edge.node.keyfiles import KeyFiles
from edge.node.logbuffer import LogBuffer
from edge.node.logs import LogWriter, Tee
from edge.node.logship import LogShipper
from edge.node.persisted import NodeState
from edge.node.runtime import NodeRuntime, Unavailable
from edge.node.server import run
from edge.node.tracing import SpanExporter

STOP_MARGIN_S = 2.0  # beyond the longest function deadline, for requests in flight at a stop


def settle_heap() -> None:
    """Moves everything allocated so far (modules, the loaded functions) out of the garbage
    collector's sight: a full collection then walks only what requests allocate, instead of
    pausing the event loop for 40-50 ms (measured) over the node's whole heap. Done once, at
    start; frozen objects dropped later are freed by reference counting (only cycles among
    them would stay, and they are the node's long-lived state)."""
    gc.collect()
    gc.freeze()


def span_exporter(config: NodeConfig) -> SpanExporter | None:
    if not config.tracing.otlp_endpoint:
        return None
    from edge.node.otlp import OtlpExporter  # the SDK loads only when it is used

    t = config.tracing
    return OtlpExporter(t.otlp_endpoint, t.service_name, config.node_id, config.region)


def key_files(control: ControlConfig) -> KeyFiles:
    """The secrets key files the node's config names, read at start: one that is not a key,
    or a current one that is missing, stops the node with a ConfigError naming it (an absent
    previous one is no key). Later changes are taken while it runs (edge.node.keyfiles)."""
    files = (control.secrets_key_file, control.previous_secrets_key_file)
    optional = () if control.previous_secrets_key_file is None else \
        (control.previous_secrets_key_file,)
    return KeyFiles.load([path for path in files if path is not None], optional)


async def run_node(config: NodeConfig, out: Output | None = None) -> None:
    say = out or Output()
    url = f"http://{config.listen}/"
    following: list[Follower] = []  # the follower, once there is one

    def hangup() -> None:
        if following:
            following[0].recheck_keys()
        elif config.control is None:
            say.note("edge node: SIGHUP: this node follows no control plane: no secrets key "
                     "files to read")
        # Else it is starting: the first revision it applies looks at the key files anyway.

    # First thing: SIGHUP's default action ends the process, so a `kill -HUP` sent to every
    # node for a key rotation must not find one without a handler (still starting, or serving
    # a node.toml). Not on the main thread (tests run servers in threads): the heartbeat's
    # look will do.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup)
    shipper = None
    secrets = KeyFiles.none()
    if config.control is not None:
        secrets = key_files(config.control)
        shipper = LogShipper(
            config.control.url, config.control.token, config.node_id, config.region,
            LogBuffer(config.logs.buffer_lines), config.logs.ship_interval_ms / 1000,
        )  # fmt: skip
    writer = LogWriter("json")
    runtime = NodeRuntime(config, writer if shipper is None else Tee([writer, shipper]))
    runtime.engine.start_workers()
    for note in runtime.engine.notes:
        say.note(f"edge node: {note}")
    runtime.spans = span_exporter(config)
    if config.control is not None:
        runtime.secrets = secrets
    if runtime.spans is not None:
        say.note(f"edge node: exporting spans to {config.tracing.otlp_endpoint} (OTLP/HTTP)")
    app = create_app(runtime)
    tasks: list[asyncio.Task[None]] = []

    async def load_static() -> None:
        deployment = await anyio.to_thread.run_sync(runtime.load_configured)
        settle_heap()
        for name, served in sorted(deployment.functions.items()):
            for fn in served.loaded():
                if isinstance(fn, Unavailable):
                    say.event("function_error", f"edge node: {name}: {fn.error.message}",
                              function=name, type=fn.error.reason, message=fn.error.message)
        say.event(
            "ready",
            f"edge node {config.node_id} ({config.region}) ready at {url} "
            f"serving {len(deployment.functions)} function(s)",
            url=url, node_id=config.node_id, region=config.region,
            functions=sorted(deployment.functions),
        )

    async def follow() -> None:
        assert config.control is not None
        control = config.control
        follower = Follower(
            runtime,
            ControlSettings(control.url, control.token, control.public_key, secrets),
            NodeState(control.state_dir),
        )
        following.append(follower)
        restored = await follower.restore()
        settle_heap()
        kept = " (serving the state kept on disk)" if restored else ""
        say.event(
            "ready",
            f"edge node {config.node_id} ({config.region}) listening at {url}, "
            f"following {control.url}{kept}",
            url=url, node_id=config.node_id, region=config.region, control=control.url,
            restored=bool(restored),
        )
        tasks.append(asyncio.create_task(follower.run()))
        if shipper is not None:
            tasks.append(asyncio.create_task(shipper.run()))

    try:
        # Stopped (SIGTERM, a drained region's restart), requests in flight may finish: their
        # function's deadline bounds them, plus time to wait for a worker and send the answer.
        await run(app, config.listen, on_ready=follow if config.control else load_static,
                  grace_s=lambda: stopping(runtime))
    finally:
        for task in tasks:
            task.cancel()
        if runtime.spans is not None:
            runtime.spans.close()  # flushes what is queued
        runtime.close()


def stopping(runtime: NodeRuntime) -> float:
    """At the stop: requests waiting for a worker are refused (or forwarded) at once; those
    running get their function's longest deadline and a margin (the grace, in seconds)."""
    runtime.stop_waiting()
    return runtime.deployment.longest_deadline_s() + STOP_MARGIN_S


def node_config_from_args(
    config_path: Path | None,
    control_url: str | None,
    region: str | None,
    node_id: str | None,
    listen: str | None,
    token: str | None,
    public_key: str | None,
    state_dir: Path | None,
    secrets_key_file: Path | None = None,
    previous_secrets_key_file: Path | None = None,
) -> NodeConfig:
    """A node.toml (optional) with command-line flags on top."""
    if config_path is not None:
        config = load_node_config(config_path)
        base = config_path.parent
    else:
        config = parse_node_config({}, "command line", Path.cwd())
        base = Path.cwd()
    config = replace(
        config,
        region=region or config.region,
        node_id=node_id or config.node_id,
        listen=check_listen(listen, "--listen", optional=False) if listen else config.listen,
    )
    if control_url:
        known = config.control
        table = {
            "url": control_url,
            "token": token or (known.token if known else ""),
            "public_key": public_key or (known.public_key.hex() if known else ""),
            "state_dir": str(
                state_dir or (known.state_dir if known else Path(".edge-node") / config.node_id)
            ),
        }
        for key, given in (("secrets_key_file", secrets_key_file),
                           ("previous_secrets_key_file", previous_secrets_key_file)):
            path = given or (getattr(known, key) if known else None)
            if path is not None:
                table[key] = str(path)
        control = parse_control(Table(table, "command line", "control"), base)
        config = replace(config, control=control)
    env_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if env_endpoint and not config.tracing.otlp_endpoint:
        config = replace(config, tracing=replace(config.tracing, otlp_endpoint=env_endpoint))
    if config.control is not None and config.cache_dir is None:
        config = replace(config, cache_dir=config.control.state_dir / "compiled")
    return config
