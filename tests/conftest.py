"""Factories for real processes on 127.0.0.1: nodes, dev servers, and built functions."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from edge.config.function import FunctionConfig
    from edge.sandbox.host import LogLine

    from .cluster import Control

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
EXAMPLES = REPO / "sdk" / "examples"
SHARED_GEOIP = REPO.parent / "shared" / "geoip"
LONDON = "81.2.69.142"  # GB, London, EU in GeoIP2-City-Test
# A node's [node] table for the platform-compatibility tests: the GeoIP test database, and
# 127.0.0.1 trusted, so a test's X-Forwarded-For picks the client's place.
GEO_NODE = (
    'id = "node-a"\nregion = "eu-west"\n'
    f'geoip_db = "{SHARED_GEOIP / "GeoIP2-City-Test.mmdb"}"\n'
    'trusted_proxies = ["127.0.0.1/32"]\n'
)
# In CI (CI=1) the property-based tests draw the same examples every run, so a merge is never
# failed by a new draw; locally they draw fresh ones, which is where new defects are found
# (HYPOTHESIS_PROFILE=ci reproduces CI's draws).
settings.register_profile("ci", derandomize=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)
# Builds are cached by content hash across test runs (and CI steps) in the repo's cache folder.
os.environ.setdefault("EDGE_CACHE_DIR", str(REPO / ".edge-cache" / "builds"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(project: Path) -> Path:
    from edge.build import build_function

    return build_function(project)


def spin_host_headers(url: str, path: str) -> dict[str, str]:
    """The headers Spin's host adds, as the SDKs give them to a function asked for `url` (whose
    path is `path`) by LONDON: see sdk/js/spin-sdk.js."""
    return {
        "spin-full-url": url,
        "spin-path-info": path,
        "spin-matched-route": "/...",
        "spin-base-path": "/",
        "spin-raw-component-route": "/...",
        "spin-component-route": "",
        "spin-client-addr": LONDON,
    }


def fixture_routes(names: list[str], built: Callable[[Path], Path]) -> str:
    """node.toml entries serving each of tests/fixtures/functions/NAME at */NAME, built first."""
    return "".join(project_route(FIXTURES / "functions" / name, built) for name in names)


def project_route(project: Path, built: Callable[[Path], Path]) -> str:
    """node.toml entries serving the function project (named as its folder) at */NAME, built
    first."""
    built(project)
    name = project.name
    return (
        f'[[function]]\nproject = "{project}"\n'
        f'[[route]]\nroute = "*/{name}"\nfunction = "{name}"\n'
    )


def reusing_copy(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of tests/fixtures/functions/NAME (without its build) that keeps one instance for
    sequential requests (`[instance] policy = "reuse"`)."""
    project = tmp_path_factory.mktemp("reuse") / name
    shutil.copytree(
        FIXTURES / "functions" / name, project, ignore=shutil.ignore_patterns("build")
    )
    with (project / "edge.toml").open("a") as toml:
        toml.write('\n[instance]\npolicy = "reuse"\n')
    return project


def thread_nices(pid: int | str = "self") -> dict[int, int]:
    """Each thread of process `pid`: its nice value (/proc/PID/task/TID/stat, field 19)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = int(fields[16])
    return out


# For tests of what a request and its answer carry, not of speed: a first request on a fresh
# instance beside other tests' compiles on 2 cores has taken over the examples' 100 ms.
ROOMY_DEADLINE_MS = 2_000


def with_deadline(config: FunctionConfig, deadline_ms: int) -> FunctionConfig:
    """`config` with its deadline replaced."""
    return replace(config, limits=replace(config.limits, deadline_ms=deadline_ms))


def roomy_function(
    project: Path, wasm: Path, where: Path, deadline_ms: int = ROOMY_DEADLINE_MS
) -> str:
    """A node.toml [[function]] table serving `wasm`, `project`'s build, with a deadline of
    `deadline_ms`: its edge.toml is copied into the folder `where` with that deadline."""
    text = re.sub(r"(?m)^deadline_ms\s*=.*\n?", "", (project / "edge.toml").read_text())
    line = f"deadline_ms = {deadline_ms}\n"
    if re.search(r"(?m)^\[limits\]", text):
        text = re.sub(r"(?m)^\[limits\]\n", lambda m: m.group(0) + line, text, count=1)
    else:
        text += f"\n[limits]\n{line}"
    where.mkdir(parents=True, exist_ok=True)
    (where / "edge.toml").write_text(text)
    return f'[[function]]\ncomponent = "{wasm}"\nmanifest = "{where / "edge.toml"}"\n'


@pytest.fixture(scope="session")
def built() -> Callable[[Path], Path]:
    """Builds a function project once per session (and once per content hash across runs)."""
    cache: dict[Path, Path] = {}

    def get(project: Path) -> Path:
        if project not in cache:
            cache[project] = build(project)
        return cache[project]

    return get


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _spawn(
    args: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    wrap: list[str] | None = None,
) -> subprocess.Popen[str]:
    """`env`: variables set for the child on top of this process's; `wrap`: a command that
    execs the rest of its arguments (the child keeps its pid)."""
    with log_path.open("w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*(wrap or []), sys.executable, "-m", "edge", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={**os.environ, **env} if env else None,
        )


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, proc: Proc) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(f"{what}: process exited early:\n{proc.log()}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what}: not ready after {timeout_s}s:\n{proc.log()}")


# Compiled components are shared by every node a test run starts (keyed by content hash and
# engine settings, like a node's own cache), so a Python or JS function compiles once per run.
COMPILED = REPO / ".edge-cache" / "compiled"


class NodeFactory:
    """start(body, node=extra [node] lines) writes a node.toml and runs `edge node` on it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def __call__(
        self, body: str, *, node: str = "", ready: bool = True, cache_dir: Path = COMPILED,
        host: str = "127.0.0.1", env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
    ) -> Proc:
        """`host`: another loopback address (127.0.0.x) gives the node an address of its own;
        `env`: variables set for the node on top of the test's; `wrap`: see _spawn."""
        port = free_port()
        config = self.workdir / f"node-{port}.toml"
        if "id =" not in node:
            node += '\nid = "test-node"\nregion = "test-region"\n'
        header = f'[node]\nlisten = "{host}:{port}"\ncache_dir = "{cache_dir}"\n'
        config.write_text(header + node + "\n" + body)
        log = self.workdir / f"node-{port}.log"
        proc = Proc(
            _spawn(["node", "--config", str(config)], log, env, wrap),
            f"http://{host}:{port}",
            log,
        )
        self.procs.append(proc)
        path = "/readyz" if ready else "/healthz"
        wait_until(lambda: httpx.get(proc.url + path).status_code == 200, 120, "node", proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def start_module_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """The same, for one node shared by every test of a module."""
    factory = NodeFactory(tmp_path_factory.mktemp("nodes"))
    yield factory
    factory.stop_all()


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """start(project, *options, env=None): `edge dev project --port P *options` (with `env`
    on top of this process's), once it serves."""
    procs: list[Proc] = []

    def start(project: Path, *options: str, env: dict[str, str] | None = None) -> Proc:
        port = free_port()
        log = tmp_path / f"dev-{port}.log"
        args = ["dev", str(project), "--port", str(port), *options]
        proc = Proc(_spawn(args, log, env), f"http://127.0.0.1:{port}", log)
        procs.append(proc)
        wait_until(lambda: "serving" in proc.log(), 180, "edge dev", proc)
        return proc

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def lines() -> list[LogLine]:
    """Where a function under test logs (LoadedFunction's sink is `lines.append`)."""
    return []


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A control plane process with its tokens (see tests/cluster.py)."""
    from .cluster import start_control

    c = start_control(tmp_path / "control", free_port(), tmp_path / "control.log")
    yield c
    c.proc.stop()
