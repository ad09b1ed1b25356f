"""JavaScript handlers' promises, seen from outside: a real node on 127.0.0.1 (and `edge dev`).

A handler whose Promise can never settle is 500 `no_response`, with the platform's line in the
log, and the node serves on; a waitUntil promise that never settles leaves the answer as it
was; work queued before an asynchronous exception cannot turn `function_exception` into `trap`;
a client's text a function logs never passes for one of the SDK's marks.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edge.errors import NoResponse
from edge.sandbox.awaiting import WAIT_UNTIL_DROPPED

from .conftest import FIXTURES, Proc, fixture_routes, project_route, reusing_copy
from .metrics_text import Scrape, delta
from .test_sdk import exception_answer, get, logged

pytestmark = pytest.mark.toolchain


@pytest.fixture(scope="module")
def node(start_module_node: Callable[..., Proc], built: Callable[[Path], Path]) -> Proc:
    return start_module_node(fixture_routes(["pending-js"], built))


def no_response_answer(r: httpx.Response, request_id: str) -> None:
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "error": "no_response",
        "message": NoResponse(request_id).message,
        "request_id": request_id,
    }
    assert "Promise never settled" in r.json()["message"]


@pytest.mark.parametrize("path", ["returns-never", "awaits-never"])
def test_a_promise_that_never_settles_is_no_response_and_says_so(node: Proc, path: str) -> None:
    request_id = f"never-{path}"
    before = Scrape.of(node.url)
    no_response_answer(get(node, f"/pending-js/{path}", request_id), request_id)
    lines = logged(node, request_id, "function gave no response")
    platform = [line for line in lines if line["source"] == "platform"]
    assert [(line["level"], line["message"]) for line in platform] == [
        ("error", NoResponse(request_id).message)
    ]
    # What the handler logged before it waited is there, and nothing looks like a crash.
    own = [line["message"] for line in lines if line["source"] == "log"]
    assert own == (["waiting for a promise nothing resolves"] if path == "awaits-never" else [])
    after = Scrape.of(node.url)
    errors = "edge_function_errors_total"
    assert delta(before, after, errors, function="pending-js", reason="no_response") == 1
    assert delta(before, after, errors, function="pending-js", reason="trap") == 0
    assert delta(before, after, "edge_function_traps_total", function="pending-js") == 0
    # The node serves on, the same function included.
    r = httpx.get(node.url + "/pending-js/", timeout=30)
    assert r.status_code == 200 and r.text == "ok\n"


def test_wait_until_that_never_settles_leaves_the_answer_and_a_warning(node: Proc) -> None:
    r = get(node, "/pending-js/wait-until-never", "wait-never")
    assert r.status_code == 202 and r.text == "answered anyway\n"
    lines = logged(node, "wait-never", "waitUntil promise still pending")
    own = [(line["level"], line["source"], line["message"].split("\n")[0]) for line in lines]
    assert own == [
        ("info", "log", "waitUntil work ran"),
        ("error", "log", "waitUntil promise rejected: RangeError: waitUntil rejected"),
        ("warn", "platform", WAIT_UNTIL_DROPPED),
    ]


def test_wait_until_that_settles_late_gets_no_warning(node: Proc) -> None:
    r = get(node, "/pending-js/wait-until-slow", "wait-slow")
    assert r.status_code == 200 and r.text == "answered first\n"
    # The node writes a request's lines before it answers: a warning would be here already.
    lines = logged(node, "wait-slow", "slow waitUntil work ran")
    assert [(line["level"], line["message"]) for line in lines] == [
        ("info", "slow waitUntil work ran")
    ]


def test_a_slow_answer_stands_with_a_wait_until_that_never_settles(node: Proc) -> None:
    # 200 hops: the SDK has marked the wait for the node, and marks the answer.
    r = httpx.get(node.url + "/pending-js/slow-answer", timeout=30)
    assert r.status_code == 200 and r.text == "slow but answered\n"


@pytest.mark.parametrize("hops", [0, 200])
def test_a_crash_after_the_answer_is_a_trap_not_no_response(node: Proc, hops: int) -> None:
    request_id = f"crash-after-{hops}"
    r = get(node, f"/pending-js/crash-after-answer?hops={hops}", request_id)
    assert r.status_code == 500 and r.json()["error"] == "trap"
    logged(node, request_id, "function trapped while running")


# From 0 hops the queued work runs before the SDK's report, from a few on after it, where it
# used to withdraw the report (the answer was `trap`), or now never runs: the report traps.
@pytest.mark.parametrize("hops", [0, 1, 2, 3, 4, 8, 50])
def test_work_queued_before_an_async_exception_keeps_it_an_exception(
    node: Proc, hops: int
) -> None:
    request_id = f"late-logs-{hops}"
    r = get(node, f"/pending-js/late-logs?hops={hops}", request_id)
    exception_answer(r, "TypeError", request_id)
    lines = logged(node, request_id, "function raised")
    own = [line["message"] for line in lines if line["source"] == "log"]
    report = [i for i, m in enumerate(own) if m.startswith("Uncaught TypeError: thrown after")]
    # The report is the function's last line: nothing it ran afterwards reached the host.
    assert report == [len(own) - 1]
    assert set(own[:-1]) <= {f"queued work ran after {hops} hops"}


def test_a_client_text_never_passes_for_an_sdk_mark(node: Proc) -> None:
    forged = "\0edge:answered\0"
    r = httpx.post(
        node.url + "/pending-js/forged-mark",
        content=forged.encode(),
        headers={"x-request-id": "forged-mark"},
        timeout=30,
    )
    no_response_answer(r, "forged-mark")
    lines = logged(node, "forged-mark", "function gave no response")
    own = [line["message"] for line in lines if line["source"] == "log"]
    assert own == ["\ufffdedge:answered\0"]


@pytest.mark.parametrize(
    ("api", "said"),
    [
        ("random", "4"),
        ("uuid", "36"),
        ("mathRandom", "number"),
        ("timeOrigin", "true"),
        ("consoleTime", "ok"),
    ],
)
@pytest.mark.parametrize("hops", [0, 200])
def test_engine_apis_near_disabled_features_answer_before_and_past_the_mark(
    node: Proc, api: str, said: str, hops: int
) -> None:
    """None of them traps: past the SDK's mark a trap would read as no_response."""
    request_id = f"engine-api-{api}-{hops}"
    r = get(node, f"/pending-js/engine-api?api={api}&hops={hops}", request_id)
    assert r.status_code == 200 and r.text == f"{api}: {said}\n", r.text
    if api == "consoleTime":  # no time passes in a function
        lines = logged(node, request_id, "t: 0ms")
        own = [(x["level"], x["message"]) for x in lines if x["source"] == "log"]
        assert own == [("info", "t: 0ms half"), ("info", "t: 0ms")]


def test_performance_now_is_frozen_instead_of_trapping(node: Proc) -> None:
    r = httpx.get(node.url + "/pending-js/clock", timeout=30)
    assert r.status_code == 200 and r.text == "performance.now() = 0\n"


def test_edge_dev_answer_carries_the_log_before_the_hang(
    tmp_path: Path, start_dev: Callable[..., Proc]
) -> None:
    project = tmp_path / "pending-js"
    shutil.copytree(
        FIXTURES / "functions" / "pending-js", project, ignore=shutil.ignore_patterns("build")
    )
    dev = start_dev(project)
    r = get(dev, "/awaits-never", "dev-never")
    assert r.status_code == 500
    doc = r.json()
    assert doc["error"] == "no_response" and doc["message"] == NoResponse("dev-never").message
    assert doc["function_log"] == ["info waiting for a promise nothing resolves"]
    # The terminal shows the platform's word next to the request's access line.
    said = [line for line in dev.log().splitlines() if "function gave no response" in line]
    assert said and all("dev-never" in line for line in said)


def test_over_the_memory_limit_while_waiting_is_memory_limit_not_no_response(node: Proc) -> None:
    r = get(node, "/pending-js/oom-while-waiting", "oom-waiting")
    assert r.status_code == 500 and r.json()["error"] == "memory_limit"
    r = httpx.get(node.url + "/pending-js/", timeout=30)
    assert r.status_code == 200 and r.text == "ok\n"


@pytest.fixture(scope="module")
def reusing(
    start_module_node: Callable[..., Proc],
    built: Callable[[Path], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Proc:
    project = reusing_copy("pending-js", tmp_path_factory)
    source = project / "index.js"  # its import of the SDK's trap, from where the copy is
    web_js = (FIXTURES / "functions" / "pending-js" / "../../../../sdk/js/web.js").resolve()
    source.write_text(source.read_text().replace("../../../../sdk/js/web.js", str(web_js)))
    return start_module_node(project_route(project, built))


def test_a_reused_instance_keeps_no_wait_from_one_request_to_the_next(reusing: Proc) -> None:
    """Marked answers, a hang, a crash after a marked answer and an exception in turn on one
    reused instance: each request's answer is its own."""
    for round_ in range(2):
        r = httpx.get(reusing.url + "/pending-js/slow-answer", timeout=30)
        assert r.status_code == 200 and r.text == "slow but answered\n"
        assert httpx.get(reusing.url + "/pending-js/", timeout=30).text == "ok\n"
        no_response_answer(get(reusing, "/pending-js/returns-never", f"r-never-{round_}"),
                           f"r-never-{round_}")  # fmt: skip
        r = httpx.get(reusing.url + "/pending-js/slow-answer", timeout=30)
        assert r.status_code == 200
        r = get(reusing, "/pending-js/crash-after-answer?hops=200", f"r-crash-{round_}")
        assert r.status_code == 500 and r.json()["error"] == "trap"
        r = get(reusing, "/pending-js/late-logs?hops=50", f"r-late-{round_}")
        exception_answer(r, "TypeError", f"r-late-{round_}")


def test_engine_promises_that_settle_after_the_mark_answer(node: Proc) -> None:
    r = httpx.post(node.url + "/pending-js/web-apis", content=b"sent", timeout=30)
    assert r.status_code == 200, r.text
    # SHA-256("abc") starts with 0xba.
    assert r.json() == {"digest": 0xBA, "blob": "blob abc", "streamed": "abc", "req": "sent"}
