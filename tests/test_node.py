"""An edge node as a real process on 127.0.0.1, driven with httpx."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import EXAMPLES, FIXTURES, SHARED_GEOIP, Proc, free_port, roomy_function

pytestmark = pytest.mark.toolchain

HOSTILE = ["loop", "membomb", "recursion", "trap", "bigresponse", "badheader", "badstatus"]


def function_entries(projects: dict[str, Path]) -> str:
    out = []
    for project in projects.values():
        out.append(f'[[function]]\nproject = "{project}"\n')
    return "\n".join(out)


@pytest.fixture(scope="module")
def node(
    start_module_node: Callable[..., Proc],
    built: Callable[[Path], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Proc:
    echo = EXAMPLES / "python" / "echo"  # what it sees is tested, not its speed
    roomy_echo = roomy_function(echo, built(echo), tmp_path_factory.mktemp("echo-python"))
    projects = {
        "hello-c": EXAMPLES / "c" / "hello",
        "busy": FIXTURES / "functions" / "busy",
        "netprobe": FIXTURES / "functions" / "netprobe",
        "netprobe-js": FIXTURES / "functions" / "netprobe-js",
        "status": FIXTURES / "functions" / "status",
    }
    projects |= {name: FIXTURES / "functions" / name for name in HOSTILE}
    for p in projects.values():
        built(p)
    routes = [
        '[[route]]\nroute = "*/"\nfunction = "hello-c"\n',
        '[[route]]\nroute = "*/echo"\nfunction = "echo-python"\n',
        '[[route]]\nroute = "*/busy"\nfunction = "busy"\n',
        '[[route]]\nroute = "*/netprobe"\nfunction = "netprobe"\n',
        '[[route]]\nroute = "*/netprobe-js"\nfunction = "netprobe-js"\n',
        '[[route]]\nroute = "only.example/"\nfunction = "echo-python"\n',
        '[[route]]\nroute = "*/status"\nfunction = "status"\n',
    ]
    routes += [f'[[route]]\nroute = "*/hostile/{n}"\nfunction = "{n}"\n' for n in HOSTILE]
    node_table = (
        'id = "node-a"\nregion = "eu-west"\n'
        f'geoip_db = "{SHARED_GEOIP / "GeoIP2-City-Test.mmdb"}"\n'
        'trusted_proxies = ["127.0.0.1/32"]\n'
    )
    body = function_entries(projects) + roomy_echo + "\n".join(routes)
    return start_module_node(body, node=node_table)


def test_hello_health_ready_and_request_id(node: Proc) -> None:
    r = httpx.get(node.url + "/")
    assert r.status_code == 200 and r.text == "Hello from C!\n"
    assert len(r.headers["x-request-id"]) == 32
    assert httpx.get(node.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(node.url + "/readyz").json()["ready"] is True
    given = httpx.get(node.url + "/", headers={"x-request-id": "trace-abc.1"})
    assert given.headers["x-request-id"] == "trace-abc.1"
    forged = httpx.get(node.url + "/", headers={"x-request-id": "bad id\twith junk"})
    assert forged.headers["x-request-id"] != "bad id\twith junk"


def test_host_and_path_routing(node: Proc) -> None:
    echo = httpx.get(node.url + "/echo/x")
    assert echo.status_code == 200, echo.text
    assert echo.json()["url"].endswith("/echo/x")
    assert httpx.get(node.url + "/echoes").text == "Hello from C!\n"
    via_host = httpx.get(node.url + "/anything", headers={"host": "only.example"})
    assert via_host.json()["url"] == "http://only.example/anything"


def test_geo_from_trusted_forwarded_for(node: Proc) -> None:
    r = httpx.get(node.url + "/echo", headers={"x-forwarded-for": "1.2.3.4, 81.2.69.142"})
    data = r.json()
    assert data["client_ip"] == "81.2.69.142"
    assert data["geo"]["country"] == "GB" and data["geo"]["city"] == "London"
    assert (data["region"], data["node_id"]) == ("eu-west", "node-a")
    jp = httpx.get(node.url + "/echo", headers={"x-forwarded-for": "2001:218::1"}).json()
    assert jp["geo"]["country"] == "JP" and jp["geo"]["continent"] == "AS"
    local = httpx.get(node.url + "/echo").json()
    assert local["client_ip"] == "127.0.0.1" and local["geo"]["country"] is None


def test_request_body_limit(node: Proc) -> None:
    r = httpx.post(node.url + "/echo", content=b"x" * (10 * 1024 * 1024 + 1))
    assert r.status_code == 413 and r.json()["error"] == "request_body_too_large"
    ok = httpx.post(node.url + "/echo", content=b"y" * 1000)
    assert ok.status_code == 200 and ok.json()["body"] == "y" * 1000


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("loop", 504, "deadline_exceeded"),
        ("membomb", 500, "memory_limit"),
        ("recursion", 500, "trap"),
        ("trap", 500, "trap"),
        ("bigresponse", 502, "response_too_large"),
        ("badheader", 502, "invalid_response"),
        ("badstatus", 502, "invalid_response"),
    ],
)
def test_hostile_function_gets_clean_error(
    node: Proc, name: str, status: int, reason: str
) -> None:
    r = httpx.get(node.url + f"/hostile/{name}", timeout=30)
    assert r.status_code == status
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["error"] == reason
    assert "stolen" not in r.headers.get("set-cookie", "")
    # The node logged it, tagged with the request id, and still serves.
    assert body["request_id"] in node.log()
    assert httpx.get(node.url + "/").status_code == 200


@pytest.mark.parametrize("status", [100, 101, 103, 199, 600, 999])
def test_status_that_cannot_end_a_response_is_invalid(node: Proc, status: int) -> None:
    # A 1xx as the final answer made the HTTP server drop the connection.
    with httpx.Client() as client:
        r = client.get(node.url + "/status", headers={"x-status": str(status)})
        assert r.status_code == 502 and r.json()["error"] == "invalid_response"
        message = r.json()["message"]
        assert f"HTTP status {status}: a response's status must be 200 to 599" in message
        assert client.get(node.url + "/status").text == "body\n"  # same connection


@pytest.mark.parametrize("status", [204, 205, 304])
def test_status_without_content_drops_the_body(node: Proc, status: int) -> None:
    with httpx.Client() as client:  # one keep-alive connection: framing must stay right
        for _ in range(2):
            r = client.get(node.url + "/status", headers={"x-status": str(status)})
            assert r.status_code == status and r.content == b""
            assert r.headers["x-function-status"] == "set"
            # RFC 9110: no Content-Length on a 204; a 304's would describe another body.
            expected = "0" if status == 205 else None
            assert r.headers.get("content-length") == expected
            after = client.get(node.url + "/status", headers={"x-status": "404"})
            assert (after.status_code, after.text) == (404, "body\n")


def test_head_says_how_long_the_body_would_be(node: Proc) -> None:
    with httpx.Client() as client:
        head = client.head(node.url + "/status")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == "5"
        assert client.get(node.url + "/status").text == "body\n"


def test_healthy_function_answers_during_hostile_load(node: Proc) -> None:
    hostile = [f"/hostile/{n}" for n in ["loop", "membomb", "recursion", "trap"]] * 3
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bad = [pool.submit(httpx.get, node.url + path, timeout=30) for path in hostile]
        good = [httpx.get(node.url + "/") for _ in range(20)]
        assert all(r.status_code >= 500 for r in (f.result() for f in bad))
    assert [r.status_code for r in good] == [200] * 20


def test_busy_function_does_not_block_others(node: Proc) -> None:
    """A function busy for 1.5 s must not delay trivial requests on the same node: they all
    answer while it runs, none waits anywhere near as long as it runs. (Not a tight latency
    bound: with other tests compiling beside it on a 2-core machine, one took 1.8 s once.)"""
    with httpx.Client() as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(client.get, node.url + "/busy?ms=1500", timeout=30)
        time.sleep(0.05)
        latencies = []
        for _ in range(10):
            t0 = time.perf_counter()
            assert client.get(node.url + "/").status_code == 200
            latencies.append(time.perf_counter() - t0)
        finished_while_busy = not busy.done()
        r = busy.result()
    assert r.status_code == 200 and json.loads(r.text)["spun_ms"] >= 1500
    assert finished_while_busy, "trivial requests waited for the busy one"
    assert max(latencies) < 1.0, latencies


def test_bad_component_never_takes_the_node_down(
    start_node: Callable[..., Proc], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.wasm"
    corrupt.write_bytes(b"\0asm\r\0\x01\0this is not a component")
    forbidden = tmp_path / "forbidden.wasm"
    import wasmtime

    forbidden.write_bytes(
        bytes(wasmtime.wat2wasm((FIXTURES / "components" / "forbidden_import.wat").read_text()))
    )
    body = (
        f'[[function]]\ncomponent = "{corrupt}"\n[[function]]\ncomponent = "{forbidden}"\n'
        '[[route]]\nroute = "*/c"\nfunction = "corrupt"\n'
        '[[route]]\nroute = "*/f"\nfunction = "forbidden"\n'
    )
    node = start_node(body)
    r = httpx.get(node.url + "/c")
    assert r.status_code == 503 and r.json()["error"] == "component_rejected"
    r = httpx.get(node.url + "/f")
    assert r.status_code == 503 and "evil:net/raw-socket@1.0.0" in r.json()["message"]
    assert httpx.get(node.url + "/nothing-here").status_code == 404
    assert "evil:net/raw-socket" in node.log()


def test_function_cannot_reach_loopback_or_host_resources(node: Proc) -> None:
    """No capability unless granted: no sockets, no DNS, no files, no env, a frozen clock."""
    import socket
    import threading

    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", tcp.getsockname()[1]))
    udp.settimeout(0.2)
    port = tcp.getsockname()[1]
    reached: list[str] = []
    done = threading.Event()

    def listen() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not done.is_set():
            for sock, kind in ((tcp, "tcp"), (udp, "udp")):
                try:
                    (sock.accept() if kind == "tcp" else sock.recvfrom(64))
                    reached.append(kind)
                except OSError:
                    pass

    listener = threading.Thread(target=listen)
    listener.start()
    before = time.time()
    try:
        py = httpx.get(node.url + f"/netprobe?port={port}", timeout=30)
        js = httpx.get(node.url + f"/netprobe-js?port={port}", timeout=30)
        time.sleep(0.5)  # a late packet would still be seen
    finally:
        done.set()
        listener.join()
        tcp.close()
        udp.close()
    assert py.status_code == 200, py.text
    report = py.json()
    for key in ("tcp", "udp", "dns", "file", "listdir"):
        assert report[key].startswith("denied"), (key, report[key])
    assert report["env"] == {}
    assert report["wall_clock_moved"] is False
    # Frozen at the request's start, to the millisecond (whole seconds would read up to 1 s
    # before `before`).
    assert before - 0.002 <= report["wall_clock"] <= before + 30
    # JS: fetch needs wasi:http, which is not granted; it must fail one way or another.
    assert js.status_code == 500 or js.json()["fetch"].startswith("denied"), js.text
    assert reached == [], f"a function reached 127.0.0.1 over {reached}"


def test_ready_only_once_every_function_is_compiled(
    start_node: Callable[..., Proc], built: Callable[[Path], Path], tmp_path: Path
) -> None:
    """An empty compile cache: the node listens at once but is not ready while it compiles. The
    Python component is served from Winch code first, and keeps answering while the node
    switches it to Cranelift code compiled in the background."""
    project = EXAMPLES / "python" / "hello"
    built(project)
    body = (
        f'[[function]]\nproject = "{project}"\n[[route]]\nroute = "*/"\nfunction = "hello-python"\n'
    )
    node = start_node(body, ready=False, cache_dir=tmp_path / "empty-cache")
    early = httpx.get(node.url + "/readyz")
    assert early.status_code == 503 and early.json()["ready"] is False
    assert httpx.get(node.url + "/healthz").status_code == 200
    deadline = time.monotonic() + 120
    while httpx.get(node.url + "/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    r = httpx.get(node.url + "/")
    assert r.status_code == 200 and r.text == "Hello from Python!\n"
    tiers = [httpx.get(node.url + "/readyz").json()["tiers"]["hello-python"][""]]
    deadline = time.monotonic() + 180
    answers = []
    while tiers[-1] != "cranelift" and time.monotonic() < deadline:
        answers.append(httpx.get(node.url + "/").status_code)
        tiers.append(httpx.get(node.url + "/readyz").json()["tiers"]["hello-python"][""])
        time.sleep(0.02)
    assert tiers[0] == "winch" and tiers[-1] == "cranelift", tiers
    assert set(answers) == {200}, answers
    assert httpx.get(node.url + "/").text == "Hello from Python!\n"
    metrics = httpx.get(node.url + "/metrics").text
    assert _metric(metrics, "edge_function_tier_ups_total", result="ok") == 1
    assert _metric(metrics, "edge_function_tier_ups_total", result="failed") == 0


def test_a_full_compile_cache_disk_stops_neither_loading_nor_the_tier_up(
    start_node: Callable[..., Proc], built: Callable[[Path], Path], tmp_path: Path
) -> None:
    """The compile cache on a 1 MiB disk of its own (a tmpfs in a mount namespace of the
    node's): the C hello's code (~20 KB) is kept; the Python hello's (~40 MB) cannot be, yet
    the node loads it, serves it and switches it to Cranelift code, from memory, and says so."""
    names = {"hello-python": EXAMPLES / "python" / "hello", "hello-c": EXAMPLES / "c" / "hello"}
    body = ""
    for name, project in names.items():
        built(project)
        body += f'[[function]]\nproject = "{project}"\n'
        body += f'[[route]]\nroute = "*/{name}"\nfunction = "{name}"\n'
    cache = tmp_path / "small-disk"
    cache.mkdir()
    small_disk = 'mount -t tmpfs -o size=1m edge-test "$0" && exec "$@"'
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", small_disk, str(cache)]
    node = start_node(body, cache_dir=cache, wrap=wrap)
    deadline = time.monotonic() + 180
    tiers = ""
    while tiers != "cranelift" and time.monotonic() < deadline:
        assert httpx.get(node.url + "/hello-python").text == "Hello from Python!\n"
        tiers = httpx.get(node.url + "/readyz").json()["tiers"]["hello-python"][""]
        time.sleep(0.05)
    assert tiers == "cranelift"
    assert httpx.get(node.url + "/hello-python").text == "Hello from Python!\n"
    assert httpx.get(node.url + "/hello-c").text == "Hello from C!\n"
    metrics = httpx.get(node.url + "/metrics").text
    assert _metric(metrics, "edge_function_tier_ups_total", result="ok") == 1
    assert _metric(metrics, "edge_node_compile_cache_unstored_total") == 1
    log = node.log()
    assert "cannot keep compiled code" in log and "No space left on device" in log, log
    # Seen through the node's own mount namespace: the C hello's code was kept, and nothing
    # of the Python hello's, not even a part.
    disk = Path(f"/proc/{node.proc.pid}/root") / cache.relative_to("/")
    kept = [p.name for p in disk.iterdir() if not p.name.endswith(".lock")]
    assert len(kept) == 1 and kept[0].endswith(".cwasm"), kept
    assert list(cache.iterdir()) == []  # the test's own view: the tmpfs is the node's alone


def test_a_compile_cache_directory_that_cannot_be_made_is_a_config_error(
    tmp_path: Path, built: Callable[[Path], Path]
) -> None:
    project = EXAMPLES / "c" / "hello"
    built(project)
    (tmp_path / "a-file").write_text("not a directory\n")
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nlisten = "127.0.0.1:{free_port()}"\ncache_dir = "a-file/compiled"\n'
        f'id = "n"\nregion = "r"\n[[function]]\nproject = "{project}"\n'
        '[[route]]\nroute = "*/"\nfunction = "hello-c"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "edge", "node", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    where = tmp_path / "a-file" / "compiled"
    assert f"error: compile cache directory {where}: Not a directory" in said, said
    assert "Traceback" not in said


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_with_real_traffic(node: Proc) -> None:
    before = httpx.get(node.url + "/metrics").text
    for _ in range(5):
        assert httpx.get(node.url + "/").status_code == 200
    for _ in range(2):
        assert httpx.get(node.url + "/hostile/trap").status_code == 500
    after = httpx.get(node.url + "/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def delta(name: str, **labels: str) -> float:
        return _metric(text, name, **labels) - _metric(before, name, **labels)

    assert delta("edge_function_requests_total", function="hello-c", status_class="2xx") == 5
    assert delta("edge_function_requests_total", function="trap", status_class="5xx") == 2
    assert delta("edge_function_errors_total", function="trap", reason="trap") == 2
    assert delta("edge_function_duration_seconds_count", function="hello-c") == 5
    assert delta("edge_function_response_bytes_total", function="hello-c") == 5 * len(
        "Hello from C!\n"
    )
    lookups = "edge_node_compile_cache_lookups_total"
    assert _metric(text, lookups, result="hit") + _metric(text, lookups, result="miss") >= 1
    assert "81.2.69" not in text and "/hostile" not in text  # no addresses or paths as labels
