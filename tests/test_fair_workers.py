"""A flooded function leaves workers to the node's other functions; its excess waits, then is
refused (503 overloaded): real nodes on 127.0.0.1 driven with httpx."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edge.build import build_function
from edge.config.toml_fields import load_toml

from .cluster import Control, converge, follower
from .conftest import (
    EXAMPLES,
    FIXTURES,
    NodeFactory,
    Proc,
    roomy_function,
    thread_nices,
    wait_until,
)
from .metrics_text import Scrape, delta

pytestmark = pytest.mark.toolchain

SLOW_DEADLINE_MS = 10_000  # the busy fixture spins for ?ms=N; it must never hit its deadline
LOOP_DEADLINE_MS = 2_000  # the C loop runs to its deadline: how long it holds a worker


def _slow_functions(built: Callable[[Path], Path], tmp: pytest.TempPathFactory) -> str:
    busy, loop = FIXTURES / "functions" / "busy", FIXTURES / "functions" / "loop"
    return (
        roomy_function(busy, built(busy), tmp.mktemp("busy"), SLOW_DEADLINE_MS)
        + roomy_function(loop, built(loop), tmp.mktemp("loop"), LOOP_DEADLINE_MS)
        + '[[route]]\nroute = "*/busy"\nfunction = "busy"\n'
        + '[[route]]\nroute = "*/loop"\nfunction = "loop"\n'
    )


@pytest.fixture(scope="module")
def node(
    start_module_node: Callable[..., Proc],
    built: Callable[[Path], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Proc:
    """Four workers of each kind, two per function, two waiting per function; a long wait;
    workers niced 10."""
    body = _slow_functions(built, tmp_path_factory)
    for lang, route in (("python", "*/hello"), ("c", "*/")):
        project = EXAMPLES / lang / "hello"
        built(project)
        body += f'[[function]]\nproject = "{project}"\n'
        body += f'[[route]]\nroute = "{route}"\nfunction = "hello-{lang}"\n'

    return start_module_node(
        body,
        node="workers = 4\nfunction_workers = 2\nqueue_length = 2\nqueue_timeout_ms = 60000\n"
        "worker_nice = 10",
    )


def _wait_queued(node: Proc, n: int) -> None:
    wait_until(lambda: Scrape.of(node.url).value("edge_node_queued_requests") == n, 30,
               f"{n} requests queued", node)  # fmt: skip


def _wait_under_way(node: Proc, n: int) -> None:
    """Until `n` requests are in flight, and long enough under way that their function no
    longer counts as fast (fairshare.STUCK_S): from then on it is held to its share."""
    wait_until(lambda: Scrape.of(node.url).value("edge_node_in_flight_requests") == n, 30,
               f"{n} requests in flight", node)  # fmt: skip
    time.sleep(0.1)


def _refused(node: Proc, r: httpx.Response, because: str) -> None:
    """503 overloaded, retryable, with its reason; the node logged it for the function's
    author, tagged with the request id."""
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    doc = r.json()
    assert doc["error"] == "overloaded" and because in doc["message"], doc
    assert doc["request_id"] == r.headers["x-request-id"]
    logged = [line for line in node.log().splitlines() if doc["request_id"] in line]
    assert any(because in line for line in logged), logged


@pytest.mark.parametrize(
    ("flood", "other", "answered"),
    [("/busy?ms=2500", "/hello", 200), ("/loop", "/", 504)],
    ids=["python-threads", "c-native-workers"],
)
def test_a_flooded_function_leaves_workers_to_others_and_refuses_its_excess(
    node: Proc, flood: str, other: str, answered: int
) -> None:
    before = Scrape.of(node.url)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        flooding = [pool.submit(httpx.get, node.url + flood, timeout=60)]
        _wait_under_way(node, 1)
        flooding += [pool.submit(httpx.get, node.url + flood, timeout=60) for _ in range(3)]
        _wait_queued(node, 2)  # two run (the function's share), two wait
        _refused(node, httpx.get(node.url + flood, timeout=60), "2 requests of this function")
        # The node's two other workers were kept for other functions: no waiting behind it.
        r = httpx.get(node.url + other, timeout=60)
        assert r.status_code == 200, r.text
        still_running = not any(f.done() for f in flooding)
        statuses = [f.result().status_code for f in flooding]
    assert still_running, "the other function waited for the flood"
    assert statuses == [answered] * 4  # the two that waited ran after
    after = Scrape.of(node.url)
    function = "busy" if flood.startswith("/busy") else "loop"
    assert delta(before, after, "edge_function_errors_total", function=function,
                 reason="overloaded") == 1  # fmt: skip
    assert after.value("edge_node_queued_requests") == 0


def test_a_c_request_given_up_keeps_its_worker_until_the_job_ends(node: Proc) -> None:
    """A client that goes away does not stop its function (it runs to its end, or deadline):
    its worker is counted as taken until then, so a flood of abandoned requests cannot push
    the function past its share. (Hypercorn lets the request's task run on after the client
    left; test_native_pool covers a request whose task is cancelled.)"""
    with pytest.raises(httpx.TimeoutException):
        httpx.get(node.url + "/loop", timeout=0.5)  # runs on for LOOP_DEADLINE_MS
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        flooding = [pool.submit(httpx.get, node.url + "/loop", timeout=60) for _ in range(2)]
        _wait_queued(node, 1)  # one runs beside the abandoned one, the other waits
        waited = time.monotonic() - started
        assert [f.result().status_code for f in flooding] == [504, 504]
    assert waited < LOOP_DEADLINE_MS / 1000, "the abandoned job ended before it was seen"


def test_a_request_that_waits_too_long_is_refused(
    start_node: Callable[..., Proc], built: Callable[[Path], Path], tmp_path: Path
) -> None:
    busy = FIXTURES / "functions" / "busy"
    body = roomy_function(busy, built(busy), tmp_path / "busy", SLOW_DEADLINE_MS)
    body += '[[route]]\nroute = "*/busy"\nfunction = "busy"\n'
    node = start_node(body, node="workers = 2\nfunction_workers = 1\nqueue_timeout_ms = 300\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.get, node.url + "/busy?ms=3000", timeout=60)
        _wait_under_way(node, 1)
        t0 = time.monotonic()
        r = httpx.get(node.url + "/busy?ms=1", timeout=60)
        waited = time.monotonic() - t0
        _refused(node, r, "no worker for this function within 300 ms")
        assert waited >= 0.3 and not running.done()
        assert running.result().status_code == 200
    # Its worker free again, the function answers.
    assert httpx.get(node.url + "/busy?ms=1", timeout=60).status_code == 200


def test_an_overloaded_request_goes_to_the_next_region_instead_of_a_503(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    """Two regions of follower nodes; eu-west's node lets the loop run on 1 worker with 1
    waiting. The next loop request it gets did not run there, so it is forwarded to us-east's
    node, which runs it (to its deadline: 504 from us-east); one already forwarded is not
    forwarded again (503 overloaded)."""
    loop = FIXTURES / "functions" / "loop"
    manifest = load_toml(loop / "edge.toml")
    manifest["limits"] = {"deadline_ms": LOOP_DEADLINE_MS}
    with control.client() as client:
        client.set_region("eu-west", 53.35, -6.26, 100)
        client.set_region("us-east", 39.04, -77.49, 100)
        eu = follower(start_node, control, "eu-1", "eu-west", tmp_path / "eu",
                      node_extra="workers = 2\nfunction_workers = 1\nqueue_length = 1\n")
        us = follower(start_node, control, "us-1", "us-east", tmp_path / "us")
        version = client.upload_version("loop", build_function(loop).read_bytes(), manifest, "")
        converge(client, client.deploy("loop", int(version["number"]), ["*/loop"]))
        converge(client, {"revision": client.status()["revision"]})  # both know both
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        flooding = [pool.submit(httpx.get, eu.url + "/loop", timeout=60)]
        _wait_under_way(eu, 1)
        flooding.append(pool.submit(httpx.get, eu.url + "/loop", timeout=60))
        _wait_queued(eu, 1)
        _refused(eu, httpx.get(eu.url + "/loop", headers={"x-edge-spilled-from": "us-east"},
                           timeout=60), "1 requests of this function")  # fmt: skip
        overruns = "edge_function_deadline_overruns_total"
        us_before = Scrape.of(us.url).value(overruns)
        spilled = httpx.get(eu.url + "/loop", timeout=60)
        assert spilled.status_code == 504, spilled.text  # ran to its deadline ...
        assert Scrape.of(us.url).value(overruns) == us_before + 1  # ... on us-east
        assert [f.result().status_code for f in flooding] == [504, 504]
    spills = Scrape.of(eu.url).value("edge_node_spills_total", to_region="us-east")
    assert spills == 1
    assert Scrape.of(us.url).value("edge_node_queued_requests") == 0


def test_requests_run_on_threads_below_the_event_loops_priority(node: Proc) -> None:
    """With `[node] worker_nice = 10`, Python and C requests run on worker threads niced 10, so
    the event loop's thread, serving HTTP and health checks, goes first when they keep every
    core busy; the loop's thread itself stays where it was."""
    for path in ("/busy?ms=20", "/"):  # past the inline budget: the busy one on a thread
        assert httpx.get(node.url + path, timeout=60).status_code == 200
    pid = node.proc.pid
    nices = thread_nices(pid)
    base = nices[pid]  # the main thread: the event loop's
    # The 4 native workers (niced as they start) and at least one Python worker.
    assert list(nices.values()).count(min(19, base + 10)) >= 4 + 1, nices
