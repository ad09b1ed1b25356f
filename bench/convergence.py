"""Deploy and rollback convergence: from the API call until all N nodes serve the change.

A control plane and N follower nodes on 127.0.0.1, in one of two modes (each row says which):
  process  every node is its own `python -m edge node` process, as deployed;
  inproc   nodes are NodeRuntime + Follower + Hypercorn on their own ports inside --hosts
           `bench.convergence_nodes` processes, sharing one SandboxEngine per process.
All nodes share one compile-cache directory, as nodes on one host would.

Every round uploads a new version (the C hello with a "beta" body and a custom section naming
the round: new bytes, so every node fetches a new blob and one of them compiles it), then times
`deploy` of it, then times `rollback` to the first version (already loaded everywhere). Upload
is not timed; the clock starts just before the deploy or rollback API call.

How "all N serve it" is observed (--observe):
  report  (default) `GET /v1/status?revision=R` long-polls on the control plane, which answers
          when the report completing R arrives. A node reports only after it has switched, so
          this is an upper bound on the moment the last node serves R; then every node is asked
          once over HTTP and must answer with R's body and x-edge-version (counted: confirmed).
  http    every node is polled over HTTP every --poll-ms until it answers with R's version.
          Costs the machine 50 x 1000/poll-ms requests/s while it waits, which slows the nodes.
A background loop (two lanes, 20 ms apart: about 100 requests/s, so that it does not itself
take much of the 2 cores) requests every node in turn all along; anything but a 200 with a
known body fails.
Round 0 is reported apart (first blob fetch and compile); p50/p99 are over the later rounds.
Targets (issue 3): p99 ≤ 1 s for deploy and rollback at N = 50; zero failed requests.

    .venv/bin/python -m bench.convergence [--runs 10:process 50:process 50:inproc] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from edge.build import build_function
from edge.config.toml_fields import load_toml
from edge.control.client import ControlClient

from .common import percentile, print_table, write_results

REPO = Path(__file__).resolve().parents[1]
FUNCTION = "hello-c"
ALPHA, BETA = "convergence alpha\n", "convergence beta\n"
START_TIMEOUT_S = 240.0  # 50 Python processes starting on 2 cores take a while
BACKGROUND_MAX_S = 1800.0
PR_SET_PDEATHSIG = 1


# --- processes ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # If the benchmark itself is killed (SIGKILL: no finally runs), its children go too.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(role: str, args: list[str], log: Path) -> Proc:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        popen = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )  # fmt: skip
    return Proc(role, popen, log)


def stop_all(procs: list[Proc]) -> None:
    for p in procs:
        if p.popen.poll() is None:
            p.popen.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def _kib(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_mib(procs: list[Proc]) -> dict[str, float]:
    """RSS counts shared pages (libraries, the mapped compile cache) once per process; PSS
    splits them, so the PSS sum is what the node processes really cost the machine."""
    nodes = [p for p in procs if p.role != "control"]
    return {
        "node_processes": len(nodes),
        "nodes_rss_mib": round(sum(_kib(p.popen.pid, "status", "VmRSS:") for p in nodes) / 1024),
        "nodes_pss_mib": round(
            sum(_kib(p.popen.pid, "smaps_rollup", "Pss:") for p in nodes) / 1024
        ),
    }


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


# --- the cluster --------------------------------------------------------------------------------


@dataclass
class Cluster:
    work: Path
    n: int
    mode: str
    hosts: int
    procs: list[Proc] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # node base URLs
    control: str = ""
    tokens: dict[str, str] = field(default_factory=dict)

    def start_control(self, port: int) -> None:
        data = self.work / "control"
        self.control = f"http://127.0.0.1:{port}"
        proc = spawn(
            "control",
            ["-m", "edge", "control", "--data", str(data), "--listen", f"127.0.0.1:{port}"],
            self.work / "control.log",
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if (data / "tokens.json").exists() and (
                    httpx.get(self.control + "/v1/status", timeout=2).status_code == 401
                ):
                    self.tokens = json.loads((data / "tokens.json").read_text())
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"control plane not up after 60 s:\n{proc.tail()}")

    def start_nodes(self, ports: list[int]) -> None:
        cache = self.work / "compiled"
        specs = [
            {"id": f"n{i}", "region": f"r{i % 3}", "port": port,
             "state_dir": str(self.work / f"state{i}")}
            for i, port in enumerate(ports)
        ]  # fmt: skip
        self.nodes = [f"http://127.0.0.1:{port}" for port in ports]
        if self.mode == "process":
            for s in specs:
                config = self.work / f"{s['id']}.toml"
                config.write_text(
                    f'[node]\nid = "{s["id"]}"\nregion = "{s["region"]}"\n'
                    f'listen = "127.0.0.1:{s["port"]}"\ncache_dir = "{cache}"\n\n'
                    f'[control]\nurl = "{self.control}"\ntoken = "{self.tokens["node"]}"\n'
                    f'public_key = "{self.tokens["public_key"]}"\n'
                    f'state_dir = "{s["state_dir"]}"\n'
                )
                args = ["-m", "edge", "node", "--config", str(config)]
                self.procs.append(spawn(str(s["id"]), args, self.work / f"{s['id']}.log"))
            return
        for h in range(self.hosts):
            spec = {
                "control": {"url": self.control, "token": self.tokens["node"],
                            "public_key": self.tokens["public_key"]},
                "cache_dir": str(cache),
                "nodes": specs[h :: self.hosts],
            }  # fmt: skip
            path = self.work / f"host{h}.json"
            path.write_text(json.dumps(spec))
            args = ["-m", "bench.convergence_nodes", str(path)]
            self.procs.append(spawn(f"host{h}", args, self.work / f"host{h}.log"))

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.role} exited with {p.popen.returncode}:\n{p.tail()}")

    async def wait_serving(self, timeout_s: float) -> float:
        """Waits until every node answers /healthz; seconds taken."""
        t0 = time.perf_counter()
        pending = set(self.nodes)
        async with httpx.AsyncClient(timeout=2, trust_env=False) as http:

            async def up(url: str) -> str | None:
                try:
                    return url if (await http.get(url + "/healthz")).status_code == 200 else None
                except httpx.HTTPError:
                    return None

            while pending and time.perf_counter() - t0 < timeout_s:
                self.check_alive()
                pending -= {u for u in await asyncio.gather(*(up(u) for u in pending)) if u}
                await asyncio.sleep(0.2)
        if pending:
            raise RuntimeError(f"{len(pending)} nodes not up after {timeout_s} s")
        return time.perf_counter() - t0


# --- the function's versions --------------------------------------------------------------------


def build_variant(tmp: Path, body: str) -> tuple[bytes, dict[str, Any]]:
    """The C hello built on a copy, answering `body`."""
    project = tmp / body.strip().replace(" ", "-")
    shutil.copytree(
        REPO / "sdk" / "examples" / "c" / "hello", project, ignore=shutil.ignore_patterns("build")
    )
    source = project / "main.c"
    source.write_text(source.read_text().replace("Hello from C!\\n", body.replace("\n", "\\n")))
    assert body.strip() in source.read_text(), "the C hello's body text moved"
    return build_function(project).read_bytes(), load_toml(project / "edge.toml")


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_custom_section(wasm: bytes, name: str, data: bytes) -> bytes:
    """`wasm` plus a custom section (id 0, ignored by the runtime): same code, new bytes."""
    payload = _leb128(len(name)) + name.encode() + data
    return wasm + b"\x00" + _leb128(len(payload)) + payload


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Change:
    kind: str  # "deploy" | "rollback"
    round: int
    revision: int
    version: int
    api_ms: float  # the API call itself
    all_ms: float  # API call → every node serves it (see --observe)
    reported_max_ms: float  # the largest convergence_ms the nodes reported for it
    confirmed: int  # nodes that then answered with this version over HTTP (report mode)
    wrong: int  # nodes that then answered with another version (report mode; must be 0)
    confirm_errors: list[str]  # HTTP errors of that check (timeouts on a loaded machine)


@dataclass
class Background:
    """Requests every node in turn from a few bounded loops; anything but a 200 with one of the
    known bodies is a failure."""

    nodes: list[str]
    ok: int = 0
    failed: int = 0
    samples: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, lanes: int = 2, pause_s: float = 0.02) -> None:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            await asyncio.gather(*(self.lane(http, k, lanes, pause_s) for k in range(lanes)))

    async def lane(self, http: httpx.AsyncClient, k: int, lanes: int, pause_s: float) -> None:
        deadline = time.monotonic() + BACKGROUND_MAX_S
        i = k
        while not self.stop.is_set() and time.monotonic() < deadline:
            url = self.nodes[i % len(self.nodes)]
            i += lanes
            try:
                r = await http.get(url + "/")
                good = r.status_code == 200 and r.text in (ALPHA, BETA)
                what = f"{url}: {r.status_code} {r.text[:80]!r}"
            except httpx.HTTPError as e:
                good, what = False, f"{url}: {e!r}"
            self.ok += good
            self.failed += not good
            if not good and len(self.samples) < 10:
                self.samples.append(what)
            await asyncio.sleep(pause_s)


@dataclass
class Observer:
    nodes: list[str]
    mode: str  # "report" | "http"
    poll_s: float
    limit_s: float
    nodes_http: httpx.AsyncClient
    control_http: httpx.AsyncClient
    gate: asyncio.Semaphore

    async def serves(self, url: str, version: int, body: str) -> bool:
        async with self.gate:
            r = await self.nodes_http.get(url + "/")
        return r.text == body and r.headers.get("x-edge-version", "").endswith(f"@{version}")

    async def node_serves_at(self, url: str, version: int, body: str, t0: float) -> float:
        while time.perf_counter() - t0 < self.limit_s:
            try:
                if await self.serves(url, version, body):
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass  # the background loop counts failures; here only "serves it yet?" matters
            await asyncio.sleep(self.poll_s)
        raise TimeoutError(f"{url} did not serve v{version} within {self.limit_s} s")

    async def reports_applied_at(self, revision: int, t0: float) -> float:
        while time.perf_counter() - t0 < self.limit_s:
            r = await self.control_http.get(
                "/v1/status", params={"revision": revision, "wait_s": self.limit_s}
            )
            r.raise_for_status()
            nodes = r.json()["nodes"]
            if len(nodes) >= len(self.nodes) and all(
                x["applied_revision"] >= revision for x in nodes
            ):
                return time.perf_counter() - t0
        raise TimeoutError(f"nodes did not report revision {revision} within {self.limit_s} s")

    async def change(
        self, kind: str, rnd: int, call: Callable[[], dict[str, Any]], bodies: dict[int, str]
    ) -> Change:
        t0 = time.perf_counter()
        # The control client is blocking: in a thread, so the background loop keeps going.
        result = await asyncio.to_thread(call)
        api_ms = (time.perf_counter() - t0) * 1000
        revision, version = int(result["revision"]), int(result["deployment"]["stable"])
        body = bodies[version]
        confirmed, wrong, errors = 0, 0, []
        if self.mode == "http":
            done = await asyncio.gather(
                *(self.node_serves_at(u, version, body, t0) for u in self.nodes)
            )
            all_s = max(done)
        else:
            all_s = await self.reports_applied_at(revision, t0)
            answers = await asyncio.gather(
                *(self.serves(u, version, body) for u in self.nodes), return_exceptions=True
            )
            confirmed = sum(a is True for a in answers)
            # A node answering with another version would be a bug (it reports after its
            # switch); an HTTP error here is the machine being slow (the background loop, not
            # this check, counts failures).
            wrong = sum(a is False for a in answers)
            errors = [repr(a)[:120] for a in answers if isinstance(a, BaseException)]
        status = (await self.control_http.get("/v1/status")).json()
        reported = [
            x["convergence_ms"] for x in status["nodes"]
            if x["convergence_ms"] is not None and x["applied_revision"] == revision
        ]  # fmt: skip
        return Change(
            kind, rnd, revision, version, round(api_ms, 1), round(all_s * 1000, 1),
            round(max(reported, default=float("nan")), 1), confirmed, wrong, errors[:3],
        )  # fmt: skip


def ms_stats(prefix: str, xs: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": round(percentile(xs, 50)),
        f"{prefix}_p99_ms": round(percentile(xs, 99)),
        f"{prefix}_max_ms": round(max(xs)),
    }


async def measure(
    cluster: Cluster, variants: dict[str, tuple[bytes, dict[str, Any]]], args: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(3)
    admin = cluster.tokens["admin"]
    with ControlClient(cluster.control, admin) as client:
        first = int(client.upload_version(FUNCTION, *variants[ALPHA], "alpha")["number"])
        bodies = {first: ALPHA}
        limits = httpx.Limits(
            max_connections=args.concurrency, max_keepalive_connections=args.concurrency
        )
        async with (
            httpx.AsyncClient(timeout=5, limits=limits, trust_env=False) as nodes_http,
            httpx.AsyncClient(
                base_url=cluster.control, timeout=args.limit_s + 5, trust_env=False,
                headers={"authorization": f"Bearer {admin}"},
            ) as control_http,
        ):  # fmt: skip
            observer = Observer(
                cluster.nodes, args.observe, args.poll_ms / 1000, args.limit_s, nodes_http,
                control_http, asyncio.Semaphore(args.concurrency),
            )  # fmt: skip
            initial = await observer.change(
                "deploy", -1, lambda: client.deploy(FUNCTION, first, ["*/"]), bodies
            )
            background = Background(cluster.nodes)
            loop_task = asyncio.create_task(background.run())
            changes: list[Change] = []
            try:
                for r in range(args.rounds + 1):
                    data, manifest = variants[BETA]
                    fresh = with_custom_section(data, "edge-bench", f"round {r}".encode())
                    uploaded = client.upload_version(FUNCTION, fresh, manifest, f"round {r}")
                    number = int(uploaded["number"])
                    bodies[number] = BETA
                    for kind, call in (
                        ("deploy", lambda n=number: client.deploy(FUNCTION, n, None)),
                        ("rollback", lambda: client.rollback(FUNCTION, first)),
                    ):
                        cluster.check_alive()
                        c = await observer.change(kind, r, call, bodies)
                        changes.append(c)
                        print(
                            f"  N={cluster.n} {cluster.mode} round {r}/{args.rounds} {kind}: "
                            f"{c.all_ms:.0f} ms (reported max {c.reported_max_ms:.0f} ms, "
                            f"confirmed {c.confirmed}/{cluster.n}, wrong {c.wrong})",
                            file=sys.stderr,
                        )
                        # A jittered pause: changes do not lock onto the nodes' heartbeats.
                        await asyncio.sleep(0.2 + rng.random() * 0.2)
            finally:
                background.stop.set()
                await loop_task
            memory = memory_mib(cluster.procs)
    rest = [c for c in changes if c.round > 0]
    deploys = [c for c in rest if c.kind == "deploy"]
    rollbacks = [c for c in rest if c.kind == "rollback"]
    confirm = {}
    if args.observe == "report":
        confirm = {
            "confirmed_min": min(c.confirmed for c in changes),
            "wrong_version_after_report": sum(c.wrong for c in changes),
        }
    return {
        "nodes": cluster.n,
        "mode": cluster.mode,
        "observe": args.observe,
        "rounds": args.rounds,
        **ms_stats("deploy", [c.all_ms for c in deploys]),
        **ms_stats("rollback", [c.all_ms for c in rollbacks]),
        **ms_stats("reported_deploy", [c.reported_max_ms for c in deploys]),
        **ms_stats("reported_rollback", [c.reported_max_ms for c in rollbacks]),
        **confirm,
        "api_p50_ms": round(percentile([c.api_ms for c in rest], 50), 1),
        "initial_deploy_ms": round(initial.all_ms),
        "round0_deploy_ms": round(changes[0].all_ms),
        "round0_rollback_ms": round(changes[1].all_ms),
        "requests_ok": background.ok,
        "requests_failed": background.failed,
        "failure_samples": background.samples,
        **memory,
        "changes": [asdict(c) for c in changes],
    }


async def run_one(
    work: Path, n: int, mode: str, args: argparse.Namespace,
    variants: dict[str, tuple[bytes, dict[str, Any]]],
) -> dict[str, Any]:  # fmt: skip
    cluster = Cluster(work, n, mode, args.hosts if mode == "inproc" else n)
    started = time.perf_counter()
    try:
        cp_port, *ports = free_ports(n + 1)
        cluster.start_control(cp_port)
        cluster.start_nodes(ports)
        up_s = await cluster.wait_serving(START_TIMEOUT_S)
        load_before = os.getloadavg()[0]
        row = await measure(cluster, variants, args)
        row["startup_s"] = round(up_s, 1)
        # The machine is shared: the 1-minute load average before and after says how much.
        row["loadavg_1m"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        row["mode_desc"] = (
            f"{n} node processes" if mode == "process"
            else f"{cluster.hosts} processes x {n // cluster.hosts}+ nodes, one engine each"
        )  # fmt: skip
        return row
    finally:
        stop_all(cluster.procs)
        print(f"N={n} {mode}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so every finally (stopping the processes) runs on SIGTERM too


def main() -> None:
    parser = argparse.ArgumentParser(description="Deploy/rollback: API call → all nodes serve")
    parser.add_argument(
        "--runs", nargs="+", default=["10:process", "50:process", "50:inproc"],
        help="N:MODE pairs, MODE one of process, inproc",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=20, help="deploy+rollback rounds per run")
    parser.add_argument("--observe", choices=["report", "http"], default="report")
    parser.add_argument("--poll-ms", type=float, default=20, help="http: per-node poll interval")
    parser.add_argument("--concurrency", type=int, default=64, help="node requests in flight")
    parser.add_argument("--hosts", type=int, default=2, help="processes in inproc mode")
    parser.add_argument("--limit-s", type=float, default=30, help="give up on a change after")
    parser.add_argument("--keep", type=Path, help="keep logs and state in this directory")
    parser.add_argument("--name", default="convergence", help="bench/results/NAME.json")
    args = parser.parse_args()
    runs = [(int(n), mode) for n, mode in (r.split(":") for r in args.runs)]
    if any(mode not in ("process", "inproc") for _, mode in runs):
        parser.error("MODE is process or inproc")
    signal.signal(signal.SIGTERM, _terminate)
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-convergence-") as tmp_name:
        root = args.keep or Path(tmp_name)
        variants = {body: build_variant(Path(tmp_name), body) for body in (ALPHA, BETA)}
        for n, mode in runs:
            work = root / f"n{n}-{mode}"
            work.mkdir(parents=True, exist_ok=True)
            print(f"N={n} {mode}: starting", file=sys.stderr)
            try:
                rows.append(asyncio.run(run_one(work, n, mode, args, variants)))
            except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as e:
                # One configuration failing (e.g. the machine cannot hold 50 processes) must
                # not lose the others' numbers; it is recorded and the exit status says so.
                print(f"N={n} {mode}: FAILED: {e}", file=sys.stderr)
                errors.append({"nodes": n, "mode": mode, "error": str(e)[:2000]})
    total_s = round(time.perf_counter() - t_all)
    path = write_results(
        args.name, rows,
        {
            "targets": {"p99_ms_at_50": 1000, "failed_requests": 0},
            "rounds_note": "p50/p99 over rounds 1..N; round 0 (first of its kind) apart",
            "errors": errors, "total_s": total_s,
            "command": " ".join(["python -m bench.convergence", *sys.argv[1:]]),
        },
    )  # fmt: skip
    if rows:

        def both(r: dict[str, Any], key: str) -> str:
            return f"{r[key + '_p50_ms']} / {r[key + '_p99_ms']}"

        print_table(
            "API call → every node serves it, p50 / p99 ms (reported: max convergence_ms the "
            "nodes reported)",
            [
                {
                    "N": r["nodes"], "mode": f"{r['mode']}/{r['observe']}",
                    "deploy": both(r, "deploy"), "rollback": both(r, "rollback"),
                    "reported dep.": both(r, "reported_deploy"),
                    "reported rb.": both(r, "reported_rollback"),
                    "failed/ok": f"{r['requests_failed']}/{r['requests_ok']}",
                    "load": "→".join(str(x) for x in r["loadavg_1m"]),
                }
                for r in rows
            ],
        )  # fmt: skip
    for err in errors:
        print(f"FAILED N={err['nodes']} {err['mode']}: {err['error']}", file=sys.stderr)
    print(f"wrote {path} in {total_s} s")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
