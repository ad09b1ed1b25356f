"""A server stopped while requests are in flight (edge.node.server.run, which the node, the
control plane and `edge dev` run on) stops cleanly: exit status 0 and no traceback."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edge.node.server import drop_cancelled

from .conftest import FIXTURES, NodeFactory, free_port, wait_until
from .metrics_text import Scrape

# An app whose every request waits far longer than the test: in flight when the server stops.
SLOW_SERVER = """
import asyncio, sys
from edge.node.server import run

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    print("in flight", flush=True)
    await asyncio.sleep(60)

asyncio.run(run(app, sys.argv[1]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_with_requests_in_flight_prints_no_traceback(sig: signal.Signals) -> None:
    listen = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SERVER, listen],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://{listen}/", timeout=0.2)
            except httpx.ReadTimeout:
                break  # accepted and in the app: listening
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        answers: list[int | str] = []

        def hang() -> None:
            try:
                answers.append(httpx.get(f"http://{listen}/", timeout=30).status_code)
            except httpx.HTTPError as e:
                answers.append(type(e).__name__)

        clients = [threading.Thread(target=hang) for _ in range(2)]
        for c in clients:
            c.start()
        assert proc.stdout is not None
        seen = 0
        while seen < 3:  # the probe's request and the two clients'
            assert proc.stdout.readline() == "in flight\n"
            seen += 1
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        for c in clients:
            c.join(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "CancelledError" not in err, err
    # Hypercorn gives a request its graceful timeout (3 s), then cancels it and answers 500.
    assert answers == [500, 500]


def test_other_errors_still_reach_the_loops_handler(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            cancelled = asyncio.CancelledError()
            drop_cancelled(loop, {"message": "a cancelled task", "exception": cancelled})
            drop_cancelled(loop, {"message": "a real problem", "exception": ValueError("bad")})
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]


@pytest.mark.toolchain
def test_a_stopped_node_lets_requests_in_flight_run_to_their_functions_deadline(
    start_node: NodeFactory, built: Callable[[Path], Path], tmp_path: Path
) -> None:
    """Hypercorn's graceful timeout (3 s) cut off a request whose function may run longer: a
    node stopped gives requests in flight its longest function deadline and a margin."""
    project = tmp_path / "loop"
    shutil.copytree(FIXTURES / "functions" / "loop", project,
                    ignore=shutil.ignore_patterns("build"))
    with (project / "edge.toml").open("a") as f:
        f.write("\n[limits]\ndeadline_ms = 4500\n")  # spins until then: 504
    built(project)
    node = start_node(f'[[function]]\nproject = "{project}"\n'
                      '[[route]]\nroute = "*/"\nfunction = "loop"\n')
    answers: list[httpx.Response | str] = []

    def ask() -> None:
        try:
            answers.append(httpx.get(node.url + "/", timeout=30))
        except httpx.HTTPError as e:
            answers.append(type(e).__name__)

    client = threading.Thread(target=ask)
    started = time.monotonic()
    client.start()
    wait_until(lambda: Scrape.of(node.url).value("edge_node_in_flight_requests") >= 1, 10,
               "the request in flight", node)
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=30) == 0
    client.join(timeout=30)
    (answer,) = answers
    assert isinstance(answer, httpx.Response), answer
    # The function's own end (its deadline, 4.5 s after it started), not a cut-off 500.
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"] == "deadline_exceeded"
    assert time.monotonic() - started >= 4.5
    assert "Traceback" not in node.log()


def test_a_stopped_node_refuses_what_waits_for_a_worker_at_once(
    start_node: NodeFactory, built: Callable[[Path], Path], tmp_path: Path
) -> None:
    """A request waiting for a worker (its function's share taken) when the node stops is
    answered 503 overloaded at once, retryable elsewhere, instead of waiting to be cut off at the
    end of the grace; the one running still runs to its end."""
    project = tmp_path / "loop"
    shutil.copytree(FIXTURES / "functions" / "loop", project,
                    ignore=shutil.ignore_patterns("build"))
    with (project / "edge.toml").open("a") as f:
        f.write("\n[limits]\ndeadline_ms = 3000\n")
    built(project)
    node = start_node(f'[[function]]\nproject = "{project}"\n'
                      '[[route]]\nroute = "*/"\nfunction = "loop"\n',
                      node="workers = 2\nfunction_workers = 1\n")  # fmt: skip
    answers: dict[str, tuple[float, httpx.Response | str]] = {}

    def ask(name: str) -> None:
        try:
            answer: httpx.Response | str = httpx.get(node.url + "/", timeout=30)
        except httpx.HTTPError as e:
            answer = type(e).__name__
        answers[name] = (time.monotonic(), answer)

    running = threading.Thread(target=ask, args=("running",))
    running.start()
    wait_until(lambda: Scrape.of(node.url).value("edge_node_in_flight_requests") >= 1, 10,
               "the request in flight", node)  # fmt: skip
    time.sleep(0.1)  # under way long enough to hold its function to its share
    waiting = threading.Thread(target=ask, args=("waiting",))
    waiting.start()
    wait_until(lambda: Scrape.of(node.url).value("edge_node_queued_requests") == 1, 10,
               "the request waiting", node)  # fmt: skip
    stopped = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=30) == 0
    running.join(timeout=30)
    waiting.join(timeout=30)
    refused_at, refused = answers["waiting"]
    assert isinstance(refused, httpx.Response), refused
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "the node is stopping" in refused.json()["message"]
    assert refused_at - stopped < 2.0  # at once, not at the running one's deadline
    ran = answers["running"][1]
    assert isinstance(ran, httpx.Response) and ran.status_code == 504, ran
    assert "Traceback" not in node.log()
