"""`edge dns` as a process: the example config served over real sockets, health, signals, errors.

Most tests start `python -m edge.traffic.main` on a free 127.0.0.1 port and ask it with
dnspython, because signals and the ready line only exist for a real process. Error paths run
in process through typer's runner.
"""

from __future__ import annotations

import http.server
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
import typer
from typer.testing import CliRunner

from edge.errors import ConfigError
from edge.traffic.main import dns as dns_command
from edge.traffic.main import run_dns
from edge.traffic.regions import load_traffic_config

from ..metrics_text import Scrape
from .conftest import CITY_TEST_DB, GEOIP

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "bench" / "gdnsd" / "traffic.toml"
EXAMPLE_HEALTH_PORT = 18080
READY = re.compile(r"^edge dns: authoritative for (\S+) on 127\.0\.0\.1:(\d+) \(udp\+tcp\)$")
START_TIMEOUT_S = 20.0  # a cold interpreter importing dnspython, httpx and maxminddb on CI
TIMEOUT_S = 3.0

# Addresses of the MaxMind City test DB (see shared/geoip/GeoIP2-City-Test.json), sent as /32
# ECS: the test DB holds small networks, and a /24 around them is mostly unknown.
LONDON = "81.2.69.142"
SEATTLE = "216.160.83.56"
BHUTAN = "67.43.156.1"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def example_config(dest: Path, health_port: int, interval_s: float = 0.1) -> Path:
    """The shared example with its health port and interval changed; checked after rewriting,
    so an edit to the example that breaks the rewrite fails here, not as a confusing timeout."""
    text = EXAMPLE.read_text()
    text = text.replace(f":{EXAMPLE_HEALTH_PORT}/", f":{health_port}/")
    text = re.sub(r"(?m)^interval_s = .*$", f"interval_s = {interval_s}", text)
    text = re.sub(r"(?m)^timeout_s = .*$", "timeout_s = 0.5", text)
    dest.write_text(text)
    config = load_traffic_config(dest)
    assert config.health.interval_s == interval_s
    assert all(f":{health_port}/" in n.health_url for n in config.nodes)
    return dest


class Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[Callable[[str, int], None]]:
    """Starts a 200-answering health endpoint on (address, port); all stopped at teardown."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(host: str, port: int) -> None:
        server = http.server.ThreadingHTTPServer((host, port), Healthz)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class DnsProcess:
    """`edge dns` (python -m edge dns) with its stderr read line by line on a thread."""

    def __init__(self, config: Path, geoip_db: Path, extra: Sequence[str] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "dns", "--config", str(config),
             "--port", "0", "--geoip-db", str(geoip_db), *extra],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.wait_line(READY, START_TIMEOUT_S)
        self.zone, self.port = ready.group(1), int(ready.group(2))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern: re.Pattern[str], timeout_s: float = TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if m := pattern.search(line):
                return m
        raise AssertionError(f"no line matching {pattern.pattern!r}; stderr so far: {self.seen}")

    def ask(self, ecs: str, tcp: bool = False) -> dns.message.Message:
        q = dns.message.make_query(
            "www.edge.test.", "A", use_edns=0, options=[dns.edns.ECSOption(ecs, 32)]
        )
        send = dns.query.tcp if tcp else dns.query.udp
        return send(q, "127.0.0.1", port=self.port, timeout=TIMEOUT_S)

    def addresses(self, ecs: str, tcp: bool = False) -> set[str]:
        return {rd.to_text() for rrset in self.ask(ecs, tcp).answer for rd in rrset}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(TIMEOUT_S)
        self._reader.join(TIMEOUT_S)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


@pytest.fixture
def start_dns(tmp_path: Path) -> Iterator[Callable[..., DnsProcess]]:
    procs: list[DnsProcess] = []

    def start(config: Path, geoip_db: Path = CITY_TEST_DB, *extra: str) -> DnsProcess:
        procs.append(DnsProcess(config, geoip_db, extra))
        return procs[-1]

    yield start
    for p in procs:
        p.stop()


def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --- The example config ------------------------------------------------------------------------


def test_example_config_is_three_loopback_regions() -> None:
    config = load_traffic_config(EXAMPLE)
    assert config.dns.zone.to_text() == "edge.test."
    assert [r.name for r in config.regions] == ["us-east", "eu-west", "ap-south"]
    for node in config.nodes:
        assert node.ipv4 is not None and node.ipv4.is_loopback
        assert node.health_url.startswith(f"http://{node.ipv4}:{EXAMPLE_HEALTH_PORT}/")


# --- A running server --------------------------------------------------------------------------


def test_serves_geo_answers_over_udp_and_tcp(
    tmp_path: Path,
    start_dns: Callable[..., DnsProcess],
    health_server: Callable[[str, int], None],
) -> None:
    # Every node healthy, so the answers do not move while the first checks come in.
    port = free_port("127.0.0.1")
    for node in load_traffic_config(EXAMPLE).nodes:
        health_server(str(node.ipv4), port)
    server = start_dns(example_config(tmp_path / "traffic.toml", port))
    assert server.zone == "edge.test."
    for tcp in (False, True):
        assert server.addresses(LONDON, tcp) == {"127.0.0.21", "127.0.0.22"}
        assert server.addresses(SEATTLE, tcp) == {"127.0.0.11", "127.0.0.12"}
        assert server.addresses(BHUTAN, tcp) == {"127.0.0.31"}
    reply = server.ask(LONDON)
    assert reply.rcode() == dns.rcode.NOERROR
    (ecs,) = reply.options
    assert isinstance(ecs, dns.edns.ECSOption) and ecs.scopelen > 0


@pytest.mark.parametrize("workers", [None, 3])
def test_health_checker_drops_a_dead_node(
    tmp_path: Path,
    start_dns: Callable[..., DnsProcess],
    health_server: Callable[[str, int], None],
    workers: int | None,
) -> None:
    port = free_port("127.0.0.21")
    health_server("127.0.0.21", port)  # eu-west-1 answers; eu-west-2 refuses connections
    extra = ("--workers", str(workers)) if workers else ()
    server = start_dns(example_config(tmp_path / "traffic.toml", port), CITY_TEST_DB, *extra)
    if workers:
        assert any(f"answering UDP with {workers} workers of 2" in line for line in server.seen)
    # Each query goes out from a new source port, so the kernel spreads them over the sockets
    # (six with 3 workers): 40 queries all missing one socket is ~(5/6)^40 = 0.07%. Every
    # process must have taken the parent's health for all 40 to agree.
    assert until(lambda: all(server.addresses(LONDON) == {"127.0.0.21"} for _ in range(40)))
    server.wait_line(re.compile(r"health: eu-west-2 unknown -> down"))


def test_sighup_keeps_the_old_db_on_a_bad_file_and_takes_a_good_one(
    tmp_path: Path, start_dns: Callable[..., DnsProcess]
) -> None:
    db = tmp_path / "city.mmdb"
    shutil.copy(CITY_TEST_DB, db)
    # No health servers: all nodes go down on their first check and we fail open to the nearest
    # region; until() waits out those first checks, during which answers may move.
    server = start_dns(example_config(tmp_path / "traffic.toml", free_port("127.0.0.1")), db)

    # Replaced by rename, as operators must: writing into the file would change pages the
    # running reader has mapped.
    broken = tmp_path / "broken.mmdb"
    shutil.copy(GEOIP / "GeoIP2-City-Test-Broken-Double-Format.mmdb", broken)
    os.replace(broken, db)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_line(re.compile(r"geoip reload failed, still serving the previous database: .*"))
    assert until(lambda: server.addresses(LONDON) == {"127.0.0.21", "127.0.0.22"})

    good = tmp_path / "good.mmdb"
    shutil.copy(GEOIP / "GeoLite2-City-Test.mmdb", good)
    os.replace(good, db)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_line(re.compile(r"geoip database reloaded from "))
    assert until(lambda: server.addresses(LONDON) == {"127.0.0.21", "127.0.0.22"})


def reload_with(server: DnsProcess, config: Path, text: str, outcome: str) -> None:
    """Write `text` to traffic.toml, send SIGHUP and wait for the `outcome` line."""
    config.write_text(text)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_line(re.compile(outcome))


@pytest.mark.parametrize("workers", [None, 2])
def test_sighup_reloads_traffic_toml_and_keeps_the_old_one_when_broken(
    tmp_path: Path,
    start_dns: Callable[..., DnsProcess],
    health_server: Callable[[str, int], None],
    workers: int | None,
) -> None:
    port = free_port("127.0.0.1")
    for node in load_traffic_config(EXAMPLE).nodes:
        health_server(str(node.ipv4), port)
    config = example_config(tmp_path / "traffic.toml", port)
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"
    extra = ["--metrics-listen", listen] + (["--workers", str(workers)] if workers else [])
    server = start_dns(config, CITY_TEST_DB, *extra)
    eu_west = {"127.0.0.21", "127.0.0.22"}
    assert until(lambda: server.addresses(LONDON) == eu_west)
    original = config.read_text()

    # London to us-east by a country rule, us-east-1 readdressed (same health URL: kept up),
    # and restart-only changes: udp_threads waits for a restart; port and, with --workers,
    # workers are the command line's, so the file's values for them do not matter.
    text = original.replace('ipv4 = "127.0.0.11"', 'ipv4 = "127.0.0.13"')
    text = text.replace("port = 5353", "port = 5354\nudp_threads = 3\nworkers = 4")
    text += '[steering.country]\nGB = ["us-east"]\n'
    reload_with(server, config, text, r"configuration reloaded from .*traffic\.toml \(")
    restarts = [line for line in server.seen if "takes a restart" in line]
    assert any("[dns] udp_threads 2 -> 3 takes a restart" in line for line in restarts)
    assert not any("[dns] port" in line for line in restarts)
    assert any("[dns] workers 0 -> 4" in line for line in restarts) == (workers is None)
    # 40 queries from new source ports reach every socket of every process (see above).
    want = {"127.0.0.13", "127.0.0.12"}
    assert until(lambda: all(server.addresses(LONDON) == want for _ in range(40)))
    assert server.addresses(LONDON, tcp=True) == want

    # Not TOML, then TOML that fails validation: both refused, the last good one serves.
    reload_with(server, config, "[dns\n", r"config reload failed, still serving the previous "
                r"configuration: .*traffic\.toml: not valid TOML")  # fmt: skip
    bad = text.replace('GB = ["us-east"]', 'GB = ["us-west"]')
    reload_with(server, config, bad, r"config reload failed, .*traffic\.toml: "
                r"steering\.country\.GB: unknown region 'us-west'")  # fmt: skip
    assert server.proc.poll() is None
    assert all(server.addresses(LONDON) == want for _ in range(40))
    scrape = Scrape.of(f"http://{listen}")
    assert scrape.value("edge_dns_config_reloads_total", result="ok") == 1
    assert scrape.value("edge_dns_config_reloads_total", result="failed") == 2


def test_a_node_kept_across_a_reload_keeps_its_health(
    tmp_path: Path,
    start_dns: Callable[..., DnsProcess],
    health_server: Callable[[str, int], None],
) -> None:
    port = free_port("127.0.0.21")
    health_server("127.0.0.21", port)  # eu-west-2 refuses connections: down at its first check
    config = example_config(tmp_path / "traffic.toml", port)
    config.write_text(re.sub(r"(?m)^rise = .*$", "rise = 100", config.read_text()))
    server = start_dns(config)
    server.wait_line(re.compile(r"health: eu-west-2 unknown -> down"))
    assert until(lambda: server.addresses(LONDON) == {"127.0.0.21"})
    # Passing from now on, but down needs 100 passes (10 s) to come up; a state that started
    # over (unknown) would come up at its first pass, 0.1 s away.
    health_server("127.0.0.22", port)
    text = config.read_text().replace("ttl_s = 30", "ttl_s = 10")
    reload_with(server, config, text, r"configuration reloaded from .*\(\[dns\] changed\)")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        reply = server.ask(LONDON)
        assert {rd.to_text() for rd in reply.answer[0]} == {"127.0.0.21"}
        assert reply.answer[0].ttl == 10
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal(
    tmp_path: Path, start_dns: Callable[..., DnsProcess], sig: signal.Signals
) -> None:
    server = start_dns(example_config(tmp_path / "traffic.toml", free_port("127.0.0.1")))
    server.proc.send_signal(sig)
    assert server.proc.wait(TIMEOUT_S) == 0
    server.wait_line(re.compile(r"^edge dns: stopping$"))
    # The port is released: UDP and TCP bind again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind(("127.0.0.1", server.port))
        t.bind(("127.0.0.1", server.port))


# --- Errors ------------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(dns_command)
    return app


def test_corrupt_geoip_db_is_a_config_error(tmp_path: Path) -> None:
    import asyncio

    config = example_config(tmp_path / "traffic.toml", free_port("127.0.0.1"))
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"not a maxmind db" * 64)
    with pytest.raises(ConfigError, match=r"garbage\.mmdb is not a valid MaxMind DB"):
        asyncio.run(run_dns(config, port=0, geoip_db=garbage))

    result = CliRunner().invoke(
        _cli(), ["--config", str(config), "--port", "0", "--geoip-db", str(garbage)]
    )
    assert result.exit_code == 1
    assert "error: geoip database" in result.output


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    config = example_config(tmp_path / "traffic.toml", free_port("127.0.0.1"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            _cli(),
            ["--config", str(config), "--port", str(port), "--geoip-db", str(CITY_TEST_DB)],
        )
    assert result.exit_code == 1
    assert f"error: cannot listen on 127.0.0.1:{port} (udp+tcp)" in result.output
