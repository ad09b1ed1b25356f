"""Queries per second of our geo-DNS server with ECS, side by side with gdnsd, measured by dnsperf.

Both servers serve bench/gdnsd/traffic.toml (zone edge.test., regions us-east, eu-west and
ap-south on 127.0.0.x, nearest region by great-circle distance) from the same .mmdb, on
127.0.0.1 high ports, each pinned to CPU 0 with dnsperf on CPU 1. Each node gets a tiny health
endpoint on its own address so both servers see every node up.

Per-query ECS: dnsperf's `-E code:hex` puts one EDNS option on every query, so a mix of client
subnets would need one pass per subnet. Instead we use `-B` (binary input, RFC 1035 TCP framing):
the query file holds whole wire-format queries, each with its own ECS option (source /24), made
with dnspython; dnsperf only rewrites the message ID. One file, thousands of subnets, one pass.

Rounds alternate ours/gdnsd (the order flips every round) with the same dnsperf settings. On a
shared machine the CPU left to the servers moves between rounds, so besides each server's
median the table gives the median of the per-round ratios (the two runs of a round are
back to back) and the queries per CPU-second each server's processes used (from /proc), which
does not depend on how much CPU the scheduler gave it. dnsperf
2.10 reports only average/min/max latency, so p50/p99 come from a separate pass per server at the
same fixed offered rate (half our median QPS) with `-v`, which prints each query's latency.

Differences between the two servers' steering, as configured here:
- gdnsd keeps at most `auto_dc_limit` (default 3, all our regions) datacenters per answer list;
  with three regions the lists are the same length as ours.
- gdnsd's geoip plugin precomputes its answer tree and returns ECS scopes from it; ours widens
  the scope per query with a bounded number of lookups, so scopes can differ (never answers).
- gdnsd's health checks are whole seconds (interval >= 1 s); ours are fractional. Not in play
  here: every node stays up for the whole run.
- Clients the DB cannot locate: both use the static order (us-east, eu-west, ap-south).
The benchmark checks answers on a sample of the subnets and reports how many agree.

    .venv/bin/python -m bench.dns [--duration 10] [--rounds 3] [--clients 4] [--outstanding 32]
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query

from edge.traffic.geodb import GeoDB, default_database
from edge.traffic.regions import TrafficConfig, load_traffic_config
from edge.traffic.steering import SPECIAL_NETWORKS

from .common import percentile, print_table, write_results

REPO = Path(__file__).resolve().parents[1]
GDNSD_DIR = Path(__file__).resolve().parent / "gdnsd"
EXAMPLE = GDNSD_DIR / "traffic.toml"
EXAMPLE_HEALTH_PORT = 18080
CITY_TEST_DB = REPO.parent / "shared" / "geoip" / "GeoIP2-City-Test.mmdb"
START_TIMEOUT_S = 30.0
QUERY_TIMEOUT_S = 2.0
SERVER_CPU, CLIENT_CPU = "0", "1"
COLD_PASS_MAX_S = 120
UDP_WORKERS_RE = re.compile(r"answering UDP with (\d+) worker")


# --- Configs -----------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` right now."""
    for _ in range(50):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            try:
                u.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free UDP+TCP port on {host}")


def render_traffic_config(
    dest: Path, health_port: int, *, interval_s: float = 5.0, timeout_s: float = 2.0, fall: int = 3
) -> TrafficConfig:
    """The example traffic.toml with its health port and timing replaced, written to `dest`."""
    text = EXAMPLE.read_text().replace(f":{EXAMPLE_HEALTH_PORT}/", f":{health_port}/")
    for key, value in (("interval_s", interval_s), ("timeout_s", timeout_s), ("fall", fall)):
        text = re.sub(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
    dest.write_text(text)
    config = load_traffic_config(dest)
    # The rewrite is by text: check it took, so a changed example fails loudly here.
    assert config.health.interval_s == interval_s and config.health.fall == fall
    assert all(f":{health_port}/" in n.health_url for n in config.nodes)
    return config


def render_gdnsd(
    dest: Path,
    config: TrafficConfig,
    *,
    port: int,
    geoip_db: Path,
    health_port: int,
    threads: int | None,
) -> Path:
    """A gdnsd config dir (config + zones/) for the same region map; returns the dir."""
    h = config.health
    (dest / "zones").mkdir(parents=True)
    dcmap = ", ".join(
        f"{r.name} => [ {', '.join(str(n.ipv4) for n in r.nodes if n.ipv4)} ]"
        for r in config.regions
    )
    (dest / "config").write_text(
        string.Template((GDNSD_DIR / "config.template").read_text()).substitute(
            listen=f"127.0.0.1:{port}",
            threads_line=f"  udp_threads => {threads}" if threads else "",
            run_dir=dest / "run",
            state_dir=dest / "state",
            health_port=health_port,
            interval=max(1, round(h.interval_s)),
            timeout=max(1, min(round(h.timeout_s), max(1, round(h.interval_s)) - 1)),
            rise=h.rise,
            fall=h.fall,
            geoip_db=geoip_db,
            datacenters=", ".join(config.steering.default),
            auto_dc_coords=", ".join(
                f"{r.name} => [ {r.latitude_deg}, {r.longitude_deg} ]" for r in config.regions
            ),
            dcmap=dcmap,
        )
    )
    d = config.dns
    zone = d.zone.to_text()
    hosts = [n.relativize(d.zone).to_text() for n in d.hosts]
    (dest / "zones" / zone.rstrip(".")).write_text(
        string.Template((GDNSD_DIR / "zone.template").read_text()).substitute(
            mname=d.nameservers[0].to_text(),
            ttl=d.ttl_s,
            ns_records="\n".join(f"@ NS {n.to_text()}" for n in d.nameservers),
            glue_records="\n".join(f"{g.name.to_text()} A {a}" for g in d.glue for a in g.ipv4),
            dyna_records="\n".join(f"{h} {d.ttl_s} DYNA geoip!edge" for h in hosts),
        )
    )
    return dest


# --- Processes ---------------------------------------------------------------------------------


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def health_endpoints(
    config: TrafficConfig, port: int, skip: frozenset[str] = frozenset()
) -> Iterator[None]:
    """A 200 /healthz on every node's address (all in 127.0.0.0/8) but the `skip` node names,
    for the block's duration."""
    servers = []
    try:
        for node in config.nodes:
            if node.name in skip:
                continue
            server = http.server.ThreadingHTTPServer((str(node.ipv4), port), _Healthz)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        yield
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if pinning() else argv


def pinning() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def tree_cpu_s(pid: int) -> float:
    """User+system CPU seconds of `pid` and its live descendants (our UDP worker processes)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0.0) for p in tree)


def wait_answering(server: Server, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until the server answers an A query for the zone (bounded), or fail with its log."""
    q = dns.message.make_query("www.edge.test.", "A")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            dns.query.udp(q, "127.0.0.1", port=server.port, timeout=0.5)
            return
        except (dns.exception.Timeout, OSError):
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.name} did not start:\n{server.log.read_text()[-3000:]}")


def start_ours(config_path: Path, geoip_db: Path, work: Path, workers: int | None = None) -> Server:
    port = free_port()
    log = work / "ours.log"
    argv = [sys.executable, "-m", "edge.traffic.main", "--config", str(config_path),
            "--port", str(port), "--geoip-db", str(geoip_db)]  # fmt: skip
    if workers is not None:
        argv += ["--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pinned(SERVER_CPU, argv), cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    server = Server("ours", proc, port, log)
    wait_answering(server)
    return server


def start_gdnsd(config: TrafficConfig, geoip_db: Path, work: Path, threads: int | None) -> Server:
    port = free_port()
    conf = render_gdnsd(
        work / "gdnsd", config, port=port, geoip_db=geoip_db,
        health_port=int(config.nodes[0].health_url.rsplit(":", 1)[1].split("/")[0]),
        threads=threads,
    )  # fmt: skip
    log = work / "gdnsd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pinned(SERVER_CPU, ["gdnsd", "-c", str(conf), "start"]),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    server = Server("gdnsd", proc, port, log)
    wait_answering(server)
    return server


# --- Queries -----------------------------------------------------------------------------------


def client_subnets(geo: GeoDB, count: int, seed: int) -> list[ipaddress.IPv4Network]:
    """`count` distinct public /24s that the DB places (with coordinates), seeded."""
    rng = random.Random(seed)
    out: dict[ipaddress.IPv4Network, None] = {}
    for _ in range(count * 50):
        if len(out) >= count:
            break
        net = ipaddress.IPv4Network((rng.randrange(1 << 24, 224 << 24) & ~0xFF, 24))
        if any(net.overlaps(s) for s in SPECIAL_NETWORKS if s.version == 4):
            continue
        loc = geo.locate(net.network_address).location
        if loc is not None and loc.latitude_deg is not None:
            out[net] = None
    return list(out)


def ecs_query(name: str, subnet: ipaddress.IPv4Network) -> dns.message.Message:
    opt = dns.edns.ECSOption(str(subnet.network_address), subnet.prefixlen)
    return dns.message.make_query(name, "A", use_edns=0, options=[opt])


def write_query_file(path: Path, subnets: list[ipaddress.IPv4Network]) -> int:
    """dnsperf -B input: each query as a 2-byte length then the message. 4 in 5 ask `www`."""
    n = 0
    with path.open("wb") as f:
        for i, subnet in enumerate(subnets):
            name = "edge.test." if i % 5 == 4 else "www.edge.test."
            wire = ecs_query(name, subnet).to_wire()
            f.write(len(wire).to_bytes(2, "big") + wire)
            n += 1
    return n


def agreement(
    ours: Server, gdnsd: Server, subnets: list[ipaddress.IPv4Network], config: TrafficConfig
) -> dict[str, Any]:
    """Ask both servers the same ECS queries; count same answers, list a few that differ."""
    region_of = {str(n.ipv4): n.region for n in config.nodes}
    same = 0
    scopes: dict[str, list[int]] = {"ours": [], "gdnsd": []}
    samples: list[dict[str, str]] = []
    for subnet in subnets:
        answers = {}
        for server in (ours, gdnsd):
            r = dns.query.udp(
                ecs_query("www.edge.test.", subnet), "127.0.0.1", port=server.port,
                timeout=QUERY_TIMEOUT_S,
            )  # fmt: skip
            answers[server.name] = {rd.to_text() for rrset in r.answer for rd in rrset}
            ecs = [o for o in r.options if isinstance(o, dns.edns.ECSOption)]
            if ecs:
                scopes[server.name].append(ecs[0].scopelen)
        if answers["ours"] == answers["gdnsd"]:
            same += 1
        else:
            if len(samples) < 10:
                samples.append(
                    {
                        "subnet": str(subnet),
                        "ours": ",".join(sorted({region_of.get(a, a) for a in answers["ours"]})),
                        "gdnsd": ",".join(sorted({region_of.get(a, a) for a in answers["gdnsd"]})),
                    }
                )
    return {
        "checked": len(subnets),
        "same_answer": same,
        "same_answer_pct": round(100 * same / max(1, len(subnets)), 1),
        "differing_examples": samples,
        "scope_median": {k: statistics.median(v) if v else None for k, v in scopes.items()},
    }


# --- dnsperf -----------------------------------------------------------------------------------

STAT_RE = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "avg_latency_s": re.compile(r"Average Latency \(s\):\s+([\d.]+)"),
}


@dataclass(frozen=True)
class PerfSettings:
    duration_s: int
    clients: int
    threads: int
    outstanding: int
    timeout_s: float

    def argv(self) -> list[str]:
        return ["-l", str(self.duration_s), "-c", str(self.clients), "-T", str(self.threads),
                "-q", str(self.outstanding), "-t", str(self.timeout_s)]  # fmt: skip


def dnsperf(
    queries: Path,
    port: int,
    s: PerfSettings,
    *,
    rate: int | None = None,
    verbose: bool = False,
    passes: int | None = None,
) -> dict[str, Any]:
    argv = ["dnsperf", "-B", "-d", str(queries), "-s", "127.0.0.1", "-p", str(port), *s.argv()]
    if passes is not None:
        argv += ["-n", str(passes)]
    if rate is not None:
        argv += ["-Q", str(rate)]
    if verbose:
        argv.append("-v")
    out = subprocess.run(
        pinned(CLIENT_CPU, argv), capture_output=True, text=True, check=True,
        timeout=s.duration_s + s.timeout_s + 30,
    ).stdout  # fmt: skip
    stats: dict[str, Any] = {}
    for key, rx in STAT_RE.items():
        m = rx.search(out)
        if m is None:
            raise RuntimeError(f"dnsperf output without {key!r}:\n{out[-2000:]}")
        stats[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    if verbose:
        # "> NOERROR binary input 0.000123": the last field is the latency in seconds.
        stats["latencies_s"] = [
            float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.startswith("> ")
        ]
    stats["argv"] = " ".join(argv)
    return stats


# --- Main --------------------------------------------------------------------------------------


def gdnsd_loads(db: Path, work: Path) -> bool:
    """Whether gdnsd's geoip plugin accepts `db` (checkconf on a throwaway config)."""
    config = render_traffic_config(work / "probe.toml", EXAMPLE_HEALTH_PORT)
    conf = render_gdnsd(
        work / "probe", config, port=free_port(), geoip_db=db,
        health_port=EXAMPLE_HEALTH_PORT, threads=1,
    )  # fmt: skip
    r = subprocess.run(
        ["gdnsd", "-c", str(conf), "checkconf"], capture_output=True, text=True, timeout=120
    )
    if r.returncode != 0:
        print(f"gdnsd rejects {db}:\n{r.stderr[-1500:]}", file=sys.stderr)
    return r.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per dnsperf round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (alternating)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    parser.add_argument("--threads", type=int, default=1, help="dnsperf -T")
    parser.add_argument("--outstanding", type=int, default=32, help="dnsperf -q")
    parser.add_argument("--subnets", type=int, default=2000, help="client /24s in the query mix")
    parser.add_argument("--check", type=int, default=300, help="subnets to compare answers on")
    parser.add_argument("--latency-seconds", type=int, default=5)
    parser.add_argument(
        "--gdnsd-threads", type=int, default=None, help="gdnsd udp_threads (default: gdnsd's, 2)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="our UDP workers (default: dns.workers, auto)"
    )
    parser.add_argument("--geoip-db", type=Path, default=None, help="default: GeoLite2-City")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for tool in ("dnsperf", "gdnsd"):
        if shutil.which(tool) is None:
            sys.exit(f"bench.dns: {tool} not found (apt-get install {tool})")
    if pinning():  # our health endpoints and this script stay off the servers' core
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    settings = PerfSettings(args.duration, args.clients, args.threads, args.outstanding, 2.0)

    with tempfile.TemporaryDirectory(prefix="bench-dns-") as tmp:
        work = Path(tmp)
        db = args.geoip_db or default_database()
        if not gdnsd_loads(db, work):
            print(f"bench.dns: falling back to {CITY_TEST_DB} for both servers", file=sys.stderr)
            db = CITY_TEST_DB
        with GeoDB(db) as geo:
            subnets = client_subnets(geo, args.subnets, args.seed)
        queries = work / "queries.bin"
        n_queries = write_query_file(queries, subnets)

        health_port = free_port()
        config_path = work / "traffic.toml"
        config = render_traffic_config(config_path, health_port)
        with health_endpoints(config, health_port):
            servers = [start_ours(config_path, db, work, args.workers)]
            try:
                servers.append(start_gdnsd(config, db, work, args.gdnsd_threads))
                ours, gd = servers
                agree = agreement(ours, gd, subnets[: args.check], config)
                # One pass over the query file: every subnet seen once, caches filled, the
                # .mmdb paged in. Its qps is the cold rate, reported apart.
                warm = replace(settings, duration_s=COLD_PASS_MAX_S)
                cold = {s.name: dnsperf(queries, s.port, warm, passes=1) for s in servers}
                runs: dict[str, list[dict[str, Any]]] = {"ours": [], "gdnsd": []}
                for r in range(args.rounds):
                    for server in servers if r % 2 == 0 else servers[::-1]:
                        cpu_before = tree_cpu_s(server.proc.pid)
                        stats = dnsperf(queries, server.port, settings)
                        stats["cpu_s"] = tree_cpu_s(server.proc.pid) - cpu_before
                        runs[server.name].append(stats)
                        print(f"round {r + 1} {server.name}: {stats['qps']:.0f} qps, "
                              f"lost {stats['lost']}", file=sys.stderr)  # fmt: skip
                ours_qps = statistics.median(s["qps"] for s in runs["ours"])
                rate = max(20, int(ours_qps / 2))
                latency = {
                    server.name: dnsperf(
                        queries, server.port,
                        replace(settings, duration_s=args.latency_seconds),
                        rate=rate, verbose=True,
                    )
                    for server in servers
                }  # fmt: skip
                workers_line = UDP_WORKERS_RE.search(ours.log.read_text())
            finally:
                for server in servers:
                    server.stop()

    rows = []
    for name in ("ours", "gdnsd"):
        qps = [s["qps"] for s in runs[name]]
        lat = latency[name]["latencies_s"]
        rows.append(
            {
                "server": name,
                "qps": round(statistics.median(qps)),
                "qps_rounds": " ".join(str(round(q)) for q in qps),
                "cold_qps": round(cold[name]["qps"]),
                "q_per_cpu_s": round(
                    statistics.median(s["completed"] / max(s["cpu_s"], 1e-9) for s in runs[name])
                ),
                "cpu_pct": round(
                    statistics.median(100 * s["cpu_s"] / args.duration for s in runs[name])
                ),
                "avg_ms": round(
                    statistics.median(s["avg_latency_s"] for s in runs[name]) * 1000, 2
                ),
                "lost": sum(s["lost"] for s in runs[name]),
                "sent": sum(s["sent"] for s in runs[name]),
                # At a fixed offered rate (half our QPS), the same for both servers.
                "p50_ms": round(percentile(lat, 50) * 1000, 3) if lat else None,
                "p99_ms": round(percentile(lat, 99) * 1000, 3) if lat else None,
                "lost_p": latency[name]["lost"],
            }
        )
    ratio = rows[0]["qps"] / max(1, rows[1]["qps"])
    paired = [o["qps"] / max(1, g["qps"]) for o, g in zip(runs["ours"], runs["gdnsd"], strict=True)]
    per_cpu = rows[0]["q_per_cpu_s"] / max(1, rows[1]["q_per_cpu_s"])
    extra = {
        "ratio_ours_over_gdnsd": round(ratio, 4),
        "ratio_median_of_rounds": round(statistics.median(paired), 4),
        "ratio_rounds": [round(r, 3) for r in paired],
        "ratio_per_cpu_s": round(per_cpu, 4),
        "target_ratio": 0.5,
        "geoip_db": str(db),
        "query_mix": {"subnets": len(subnets), "queries_in_file": n_queries,
                      "ecs_source_prefix": 24, "names": "www 80%, apex 20%, all A"},
        "columns": {"qps": "median over rounds", "cold_qps": "first pass over the query "
                    "file, every subnet new", "q_per_cpu_s": "queries answered per CPU-second of "
                    "the server's processes, median over rounds", "cpu_pct": "the server's CPU "
                    "use in a round, % of one core", "avg_ms": "dnsperf average latency at full "
                    "load, median over rounds", "p50_ms/p99_ms/lost_p": "separate dnsperf -v "
                    "pass at latency_rate_qps offered to each server"},
        "dnsperf": {"settings": settings.argv(), "latency_rate_qps": rate,
                    "example_argv": runs["ours"][0]["argv"]},
        "pinning": {"servers_cpu": SERVER_CPU, "dnsperf_cpu": CLIENT_CPU} if pinning() else None,
        "gdnsd_udp_threads": args.gdnsd_threads or "default (2)",
        "ours_udp_workers": int(workers_line.group(1)) if workers_line else None,
        "agreement": agree,
    }  # fmt: skip
    path = write_results("dns", rows, extra)
    print_table(
        f"Geo-DNS with ECS, dnsperf {' '.join(settings.argv())}; "
        f"ours/gdnsd = {ratio:.3f} (target >= 0.5), median of per-round ratios "
        f"{statistics.median(paired):.3f}, per CPU-second {per_cpu:.3f}",
        rows,
    )
    print(
        f"avg_ms at full load; p50/p99 (lost_p: lost) at {rate} qps offered to each; "
        f"answers agree on {agree['same_answer']}/{agree['checked']} subnets; wrote {path}"
    )


if __name__ == "__main__":
    main()
