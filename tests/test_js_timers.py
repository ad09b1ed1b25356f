"""JavaScript timers on virtual time (sdk/js/timers.js), seen from outside: a real node on
127.0.0.1 serving tests/fixtures/functions/timers-js, whose answers list the order things ran in.

Timers run in the order of their due times without waiting; they end with the request unless
waitUntil work is pending; a callback's exception is the request's; a timer that never ends is
stopped by the deadline; a reused instance starts with none of the last request's timers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Proc, fixture_routes, project_route, reusing_copy
from .test_sdk import exception_answer, get, logged

pytestmark = pytest.mark.toolchain


@pytest.fixture(scope="module")
def node(start_module_node: Callable[..., Proc], built: Callable[[Path], Path]) -> Proc:
    return start_module_node(fixture_routes(["timers-js"], built))


def lines_of(node: Proc, request_id: str) -> list[dict[str, Any]]:
    """The request's log lines: all there once it is answered (the node writes them first)."""
    texts = node.log().splitlines()
    return [json.loads(t) for t in texts if t.startswith("{") and f'"{request_id}"' in t]


def answer(node: Proc, case: str) -> object:
    r = httpx.get(f"{node.url}/timers-js/{case}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_timers_run_in_the_order_of_their_due_times_after_the_microtasks(node: Proc) -> None:
    # t10 and t10b are due together: in the order set; the cleared one never runs; a zero
    # delay is a task, so the microtask queued after it runs first, as in browsers.
    assert answer(node, "order") == ["sync", "microtask", "t0", "t10", "t10b:xy", "t30"]


def test_an_interval_repeats_in_time_with_other_timers_until_cleared(node: Proc) -> None:
    assert answer(node, "interval") == ["tick1", "tick2", "t45", "tick3"]


def test_a_timer_set_by_a_timer_counts_from_when_it_was_set(node: Proc) -> None:
    # outer20 sets inner+5, due at 25: after t22, before t30. scheduler.wait(40) is a timer too.
    assert answer(node, "nested") == ["outer20", "t22", "inner+5", "t30"]


def test_delays_browsers_take_as_zero_are_zero(node: Proc) -> None:
    assert answer(node, "odd-delays") == ["huge", "negative", "nan", "t10"]


def test_work_wins_a_race_against_a_long_timeout(node: Proc) -> None:
    # 1,000 awaits finish before a 5 s timeout fires, and nothing waits 5 s.
    started = time.monotonic()
    assert answer(node, "race") == [sum(range(1000))]
    assert time.monotonic() - started < 5


def test_many_timers_run_sorted(node: Proc) -> None:
    assert answer(node, "many") == {"count": 2000, "sorted": True}


def test_abort_signals_on_virtual_time(node: Proc) -> None:
    assert answer(node, "aborted-wait") == ["rejected: stop"]
    # The engine's own AbortSignal.timeout waited in the host's poll, past the deadline (2 s).
    started = time.monotonic()
    r = httpx.get(f"{node.url}/timers-js/abort-timeout", timeout=30)
    assert r.status_code == 200 and r.text == "aborted: TimeoutError\n"
    assert time.monotonic() - started < 2


def test_timers_left_after_the_answer_are_dropped(node: Proc) -> None:
    r = get(node, "/timers-js/interval-after-answer", "interval-after")
    assert r.status_code == 200 and r.text == "answered\n"
    assert lines_of(node, "interval-after") == []


def test_wait_until_work_runs_its_timers_and_then_the_rest_are_dropped(node: Proc) -> None:
    r = get(node, "/timers-js/wait-until-timer", "wait-until-timer")
    assert r.status_code == 200 and r.text == "answered\n"
    logged(node, "wait-until-timer", "waitUntil timer ran")
    # The 1 s timer waitUntil waits on runs; the 5 s one is due after that work is done. No
    # warning of a waitUntil promise left pending.
    assert [(line["level"], line["message"]) for line in lines_of(node, "wait-until-timer")] == [
        ("info", "waitUntil timer ran")
    ]


def test_an_exception_in_a_timer_is_the_requests(node: Proc) -> None:
    exception_answer(get(node, "/timers-js/throws", "timer-throws"), "RangeError", "timer-throws")
    lines = logged(node, "timer-throws", "function raised")
    own = [line["message"] for line in lines if line["source"] == "log"]
    assert own[0].startswith("Uncaught RangeError: thrown in a timer")


def test_an_exception_in_a_timer_after_the_answer_is_logged_and_the_answer_stands(
    node: Proc,
) -> None:
    r = get(node, "/timers-js/throws-after-answer", "timer-throws-late")
    assert r.status_code == 200 and r.text == "answered\n"
    lines = logged(node, "timer-throws-late", "Uncaught in a timer after the answer")
    assert [(line["level"], line["message"].split("\n")[0]) for line in lines] == [
        ("error", "Uncaught in a timer after the answer: RangeError: thrown after the answer")
    ]


def test_a_string_callback_is_a_type_error(node: Proc) -> None:
    exception_answer(get(node, "/timers-js/string", "timer-string"), "TypeError", "timer-string")


def test_an_interval_that_never_ends_meets_the_deadline_and_the_node_serves_on(
    node: Proc,
) -> None:
    r = httpx.get(f"{node.url}/timers-js/interval-forever", timeout=30)
    assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
    assert answer(node, "order")[0] == "sync"


@pytest.fixture(scope="module")
def reusing(
    start_module_node: Callable[..., Proc],
    built: Callable[[Path], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Proc:
    return start_module_node(project_route(reusing_copy("timers-js", tmp_path_factory), built))


def test_a_reused_instance_starts_each_request_with_no_timers(reusing: Proc) -> None:
    """Virtual time starts at 0 again, and an interval the last request left is gone."""
    for _ in range(3):
        r = httpx.get(f"{reusing.url}/timers-js/interval-after-answer", timeout=30)
        assert r.status_code == 200
        assert answer(reusing, "interval") == ["tick1", "tick2", "t45", "tick3"]
        assert answer(reusing, "nested") == ["outer20", "t22", "inner+5", "t30"]
    assert "interval ran after the answer" not in reusing.log()
