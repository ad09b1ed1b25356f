"""Starting a control plane and follower nodes for tests, and deploying C hello variants."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edge.build import build_function
from edge.config.toml_fields import load_toml
from edge.control.client import ControlClient
from edge.control.sealing import KEY_FILE

from .conftest import EXAMPLES, NodeFactory, Proc, _spawn, wait_until

FUNCTION = "hello-c"


@dataclass
class Control:
    proc: Proc
    data: Path
    port: int
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> ControlClient:
        return ControlClient(self.url, self.tokens["admin"])


def start_control(data: Path, port: int, log: Path, extra: tuple[str, ...] = ()) -> Control:
    """`extra`: more `edge control` options (e.g. --health-interval)."""
    proc = Proc(
        _spawn(["control", "--data", str(data), "--listen", f"127.0.0.1:{port}", *extra], log),
        f"http://127.0.0.1:{port}",
        log,
    )
    control = Control(proc, data, port)
    wait_until(
        lambda: (data / "tokens.json").exists() and _listening(control.url),
        60,
        "control plane",
        proc,
    )
    control.tokens = json.loads((data / "tokens.json").read_text())
    return control


def _listening(url: str) -> bool:
    return httpx.get(url + "/v1/status").status_code == 401


def follower(
    start_node: NodeFactory,
    control: Control,
    node_id: str,
    region: str,
    state: Path,
    public_key: str | None = None,
    ready: bool = True,
    cache_dir: Path | None = None,
    extra: str = "",
    host: str = "127.0.0.1",
    secrets_key: bool = True,
    node_extra: str = "",
) -> Proc:
    """`extra`: more node.toml tables (e.g. [tracing]) after [control]; `host`: the loopback
    address it listens on (and DNS answers with); `secrets_key`: give it the control plane's
    secrets key file, as `edge up` does; `node_extra`: more [node] lines."""
    key = f'secrets_key_file = "{control.data / KEY_FILE}"\n' if secrets_key else ""
    body = (
        f'[control]\nurl = "{control.url}"\ntoken = "{control.tokens["node"]}"\n'
        f'public_key = "{public_key or control.tokens["public_key"]}"\n'
        f'state_dir = "{state}"\n{key}{extra}'
    )
    node = f'id = "{node_id}"\nregion = "{region}"\ntrusted_proxies = ["127.0.0.1/32"]\n'
    node += node_extra
    if cache_dir is None:
        return start_node(body, node=node, ready=ready, host=host)
    return start_node(body, node=node, ready=ready, cache_dir=cache_dir, host=host)


def variant(tmp: Path, text: str) -> tuple[bytes, dict[str, object]]:
    """The C hello answering `text`, built; returns (component bytes, manifest)."""
    project = tmp / text.replace(" ", "-")
    shutil.copytree(EXAMPLES / "c" / "hello", project, ignore=shutil.ignore_patterns("build"))
    source = project / "main.c"
    source.write_text(source.read_text().replace("Hello from C!", text))
    return build_function(project).read_bytes(), load_toml(project / "edge.toml")


def upload(client: ControlClient, tmp: Path, text: str) -> int:
    data, manifest = variant(tmp, text)
    return int(client.upload_version(FUNCTION, data, manifest, text)["number"])


def cache_lookups(node: Proc) -> float:
    """How often the node looked in its compile cache: it does before every compile."""
    text = httpx.get(node.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edge_node_compile_cache_lookups_total{")
    )


def converge(client: ControlClient, result: dict[str, object]) -> None:
    state = client.wait_for(int(result["revision"]), 60)
    assert state.converged, state
