"""What the SDKs promise a function's author, seen from outside: a real node on 127.0.0.1.

An exception a handler lets out ends the request with 500 `function_exception` naming its type
(never its message) and leaves its traceback in the function's log as one line; only the SDK's
report right before the trap counts, not a line that looks like one; stdout arrives whole lines
at a time; the JS SDK's request bodies are exact bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.sandbox.awaiting import ANSWERED, AWAITING, WAIT_UNTIL_PENDING
from edge.sandbox.uncaught import REPORT_MARK

from .conftest import Proc, fixture_routes
from .metrics_text import Scrape, delta

pytestmark = pytest.mark.toolchain

FUNCTIONS = [
    "uncaught-py", "uncaught-js", "mirror-js", "headers-js", "response-py", "console-js",
    "fakeexception", "trap",
]  # fmt: skip
SECRETS = ["sk_live_py_SECRET_4242", "sk_live_js_SECRET_4242", "secret-in-fake-message"]


@pytest.fixture(scope="module")
def node(start_module_node: Callable[..., Proc], built: Callable[[Path], Path]) -> Proc:
    return start_module_node(fixture_routes(FUNCTIONS, built))


def logged(node: Proc, request_id: str, last: str) -> list[dict[str, Any]]:
    """The node's log lines (JSON on stderr) for one request, once one ends with `last`."""
    deadline = time.monotonic() + 10
    while True:
        lines = []
        for text in node.log().splitlines():
            if text.startswith("{") and f'"{request_id}"' in text:
                lines.append(json.loads(text))
        if any(line["message"].startswith(last) for line in lines):
            return lines
        assert time.monotonic() < deadline, f"no line {last!r} for {request_id}:\n{node.log()}"
        time.sleep(0.05)


def get(node: Proc, path: str, request_id: str) -> httpx.Response:
    return httpx.get(node.url + path, headers={"x-request-id": request_id}, timeout=30)


def exception_answer(r: httpx.Response, exception_type: str, request_id: str) -> None:
    """A node's answer to an uncaught exception: its type and where to look, nothing more."""
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "error": "function_exception",
        "message": f"function raised an uncaught exception: {exception_type}; the traceback "
        f"is in the function's log under request id {request_id}",
        "request_id": request_id,
    }


def test_python_exception_names_its_type_with_the_traceback_in_the_log(node: Proc) -> None:
    r = get(node, "/uncaught-py", "py-raise")
    exception_answer(r, "ValueError", "py-raise")
    lines = logged(node, "py-raise", "function raised")
    errors = [line for line in lines if line["level"] == "error" and line["source"] != "platform"]
    assert len(errors) == 1  # the whole traceback, one line
    assert errors[0]["source"] == "log"
    text = errors[0]["message"]
    assert text.startswith("Traceback (most recent call last):\n")
    # Source lines are not there (a function has no files at request time), the frames are;
    # the SDK's own frame is left out.
    assert '/app.py", line ' in text and "edge_sdk" not in text
    assert text.endswith("\nValueError: boom from python")
    # componentize-py's own report of the exception (a Rust panic) is not added to it.
    assert not any("panicked" in m["message"] or "RUST_BACKTRACE" in m["message"] for m in lines)
    assert lines[-1]["source"] == "platform" and lines[-1]["message"] == r.json()["message"]


def test_an_exceptions_message_stays_out_of_the_answer(node: Proc) -> None:
    r = get(node, "/uncaught-py/secret", "py-secret")
    exception_answer(r, "app.PaymentDeclined", "py-secret")
    js = get(node, "/uncaught-js/secret", "js-secret")
    exception_answer(js, "PaymentDeclined", "js-secret")
    for answer in [r, js]:
        assert not any(secret in answer.text for secret in SECRETS)
        assert "Traceback" not in answer.text and "bundle.js" not in answer.text
    # The function's log has it all, for its author.
    said = "app.PaymentDeclined: card declined for api_key=sk_live_py_SECRET_4242"
    assert any(x["message"].endswith(said) for x in logged(node, "py-secret", "function raised"))
    js_lines = logged(node, "js-secret", "function raised")
    own = [x["message"] for x in js_lines if x["source"] == "log"]
    assert own[0].startswith("Uncaught PaymentDeclined: api_key=sk_live_js_SECRET_4242\n    at ")


def test_a_c_trap_is_still_a_trap(node: Proc) -> None:
    r = get(node, "/trap", "c-trap")
    assert r.status_code == 500 and r.json()["error"] == "trap"
    assert r.json()["message"] == (
        "function trapped while running: wasm trap: wasm `unreachable` instruction executed"
    )


@pytest.mark.parametrize("path", ["/fakeexception", "/fakeexception/mark-then-log",
                                  "/fakeexception/mark-then-config"])  # fmt: skip
def test_lines_that_look_like_an_exception_do_not_make_a_trap_one(node: Proc, path: str) -> None:
    request_id = "fake" + path.replace("/", "-")
    r = get(node, path, request_id)
    assert r.status_code == 500 and r.json()["error"] == "trap", r.text
    assert "secret-in-fake-message" not in r.text
    logged(node, request_id, "function trapped")


def test_a_report_names_no_type_that_is_not_a_name(node: Proc) -> None:
    # A function can claim an exception on purpose (it could as well raise one); what it
    # writes still reaches the client only as a type name.
    r = get(node, "/fakeexception/mark", "fake-mark")
    exception_answer(r, "(unnamed)", "fake-mark")
    assert "secret-in-fake-message" not in r.text and "Type" not in r.text


def test_exceptions_count_by_reason_apart_from_traps(node: Proc) -> None:
    before = Scrape.of(node.url)
    for n in range(2):
        assert get(node, "/uncaught-py", f"py-count-{n}").json()["error"] == "function_exception"
        assert get(node, "/uncaught-js", f"js-count-{n}").json()["error"] == "function_exception"
    assert get(node, "/trap", "c-count").json()["error"] == "trap"
    after = Scrape.of(node.url)
    errors = "edge_function_errors_total"
    for function in ["uncaught-py", "uncaught-js"]:
        assert delta(before, after, errors, function=function, reason="function_exception") == 2
        assert delta(before, after, errors, function=function, reason="trap") == 0
        assert delta(before, after, "edge_function_traps_total", function=function) == 0
        assert delta(before, after, "edge_function_requests_total", function=function,
                     status_class="5xx") == 2  # fmt: skip
    assert delta(before, after, errors, function="trap", reason="trap") == 1
    assert delta(before, after, "edge_function_traps_total", function="trap") == 1


def test_stdout_is_logged_a_whole_line_at_a_time(node: Proc) -> None:
    assert get(node, "/uncaught-py/ok", "py-ok").text == "ok\n"
    out = [line["message"] for line in logged(node, "py-ok", "no newline")
           if line["source"] == "stdout"]  # fmt: skip
    # The last line had no newline: it is flushed when the call ends, not kept for the next.
    assert out == ["printed in three pieces", "no newline at the end"]
    assert get(node, "/uncaught-py/ok", "py-ok-2").text == "ok\n"
    again = [line["message"] for line in logged(node, "py-ok-2", "no newline")
             if line["source"] == "stdout"]  # fmt: skip
    assert again == out


@pytest.mark.parametrize(
    ("path", "first"),
    [
        ("/uncaught-js", "Uncaught Error: boom from js"),
        ("/uncaught-js/string", "Uncaught string: a bare string"),
        (
            "/uncaught-js/undefined",
            "Uncaught TypeError: handle(req) must return a Response, got undefined",
        ),
        (
            "/uncaught-js/promise",
            "Uncaught TypeError: handle(req) must return a Response, got Object",
        ),
        ("/uncaught-js/rejected", "Uncaught RangeError: rejected later"),
    ],
)
def test_javascript_exception_names_its_type_with_its_stack_in_the_log(
    node: Proc, path: str, first: str
) -> None:
    request_id = "js" + path.replace("/", "-")
    r = get(node, path, request_id)
    exception_answer(r, first.split(":")[0].removeprefix("Uncaught "), request_id)
    lines = logged(node, request_id, "function raised")
    own = [line for line in lines if line["source"] == "log"]
    assert len(own) == 1 and own[0]["level"] == "error"  # message and stack: one line
    head, *frames = own[0]["message"].split("\n")
    assert head == first
    if "Error" in first:  # an Error has a stack, one line per frame
        assert frames and all(frame.startswith("    at ") for frame in frames)
    else:
        assert frames == []
    assert get(node, "/uncaught-js/ok", request_id + "-after").text == "ok\n"


def test_javascript_request_body_is_exact_bytes(node: Proc) -> None:
    binary = bytes(range(256)) * 1200  # ~300 KB, every byte value, not UTF-8
    r = httpx.post(node.url + "/mirror-js", content=binary, timeout=30)
    assert r.status_code == 200 and r.content == binary
    text = "héllo ✓ 🙂"
    r = httpx.post(node.url + "/mirror-js", content=text.encode(), timeout=30)
    assert r.content == text.encode()
    assert r.headers["x-text-length"] == "10"  # UTF-16 code units, as JavaScript counts
    empty = httpx.post(node.url + "/mirror-js", content=b"", timeout=30)
    assert empty.status_code == 200 and empty.content == b""
    assert empty.headers["x-text-length"] == "0"


@pytest.mark.parametrize("form", ["headers", "map", "pairs", "object"])
def test_javascript_headers_as_fetch_code_writes_them(node: Proc, form: str) -> None:
    sent = [("x-rep", "one"), ("X-Rep", "two")]
    r = httpx.get(node.url + f"/headers-js?form={form}", headers=sent)
    assert r.status_code == 200
    # A Headers or a Map used to be read as a plain object: no headers at all.
    assert (r.headers["x-given"], r.headers["content-type"]) == ("1", "text/x-given")
    seen = r.json()
    assert seen["rep"] == "one, two" and seen["has"] is True and seen["missing"] is None
    assert seen["count"] >= 3  # still the array of pairs: host, the two x-rep, ...


def test_python_response_takes_a_dict_of_headers_and_a_str_body(node: Proc) -> None:
    r = httpx.get(node.url + "/response-py")
    assert r.status_code == 201 and r.content == "héllo".encode()
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert (r.headers["x-up"], r.headers["x-chained"]) == ("1", "yes")


def test_javascript_console_writes_to_the_functions_log(node: Proc) -> None:
    assert get(node, "/console-js", "js-console").text == "ok\n"
    lines = logged(node, "js-console", "TypeError: described")
    own = [(line["level"], line["message"]) for line in lines if line["source"] == "log"]
    assert own[:4] == [
        ("info", 'hello {"n":1} 2 null'),
        ("info", "an info line"),
        ("debug", "a debug line"),
        ("warn", "a warning"),
    ]
    level, message = own[4]
    assert level == "error" and message.startswith("TypeError: described\n")
    assert "at the top level" not in node.log()  # build time: there was no request to log to


def own_lines(node: Proc, request_id: str, last: str) -> list[tuple[str, str]]:
    lines = logged(node, request_id, last)
    return [(line["level"], line["message"]) for line in lines if line["source"] == "log"]


def test_javascript_console_log_formats_printf_specifiers_as_node(node: Proc) -> None:
    assert get(node, "/console-js/format", "js-format").text == "ok\n"
    assert [m for _, m in own_lines(node, "js-format", "%x kept")] == [
        'cart has 3 items costing 42 (1.5) {"a":1} [1] {"b":"x"}',
        " styled% done extra 7",  # %c takes its CSS and writes nothing
        "100%% %s",  # a lone string is written as it is
        "one and %s",  # a specifier without an argument stays
        "-0 12n %s",  # the arguments left over follow, as they are
        "%x kept",  # not a specifier
    ]


TABLE = """\
┌─────────┬─────┬─────┬──────┐
│ (index) │ a   │ b   │ c    │
├─────────┼─────┼─────┼──────┤
│ 0       │ 1   │ "Y" │      │
│ 1       │ "Z" │     │ null │
└─────────┴─────┴─────┴──────┘"""
VALUES = """\
┌─────────┬────────┐
│ (index) │ Values │
├─────────┼────────┤
│ 0       │ "p"    │
│ 1       │ 2      │
└─────────┴────────┘"""
COLUMNS = """\
┌─────────┬────┐
│ (index) │ x  │
├─────────┼────┤
│ r1      │ 1  │
│ r2      │ 22 │
└─────────┴────┘"""


def test_javascript_console_assert_count_dir_group_table_and_trace(node: Proc) -> None:
    assert get(node, "/console-js/more", "js-more").text == "ok\n"
    own = own_lines(node, "js-more", "Trace: ")
    assert own[:-1] == [
        ("error", "Assertion failed"),
        ("error", "Assertion failed: expected 2 got 1"),
        ("error", 'Assertion failed {"n":1}'),
        ("info", "default: 1"),
        ("info", "k: 1"),
        ("info", "default: 2"),
        ("info", "default: 1"),
        ("warn", "Count for 'nope' does not exist"),
        ("info", '{"d":[1,2]}'),
        ("info", "x 1"),
        ("info", "outer"),
        ("info", "  in one"),
        ("warn", "    two\n    lines"),  # every line of it indented
        ("error", "out"),  # a groupEnd too many is no harm
        ("info", TABLE),
        ("info", VALUES),
        ("info", COLUMNS),
        ("info", "5"),
    ]
    level, trace = own[-1]
    # The stack where console.trace was called, mapped to the source as any stack is.
    assert level == "trace" and trace.startswith("Trace: here now\n    at handle@index.js:")


def test_javascript_console_state_starts_fresh_on_a_reused_instance(node: Proc) -> None:
    """console-js is served on a reused instance: the counts, the group and the timer one
    request left open are not the next one's; neither is the count at the module's top level."""
    for round_ in range(3):
        request_id = f"js-console-state-{round_}"
        assert get(node, "/console-js/state", request_id).text == "ok\n"
        assert own_lines(node, request_id, "  inside") == [
            ("warn", "Warning: No such label 'running' for console.timeEnd()"),
            ("info", "visits: 1"),
            ("info", "left open"),
            ("info", "  inside"),
        ]


@pytest.mark.parametrize(
    ("name", "mark"),
    [
        ("awaiting", AWAITING),
        ("answered", ANSWERED),
        ("report", REPORT_MARK + "Forged\0m\0tb"),
        ("wait-until", WAIT_UNTIL_PENDING),
    ],
)
def test_python_client_text_never_passes_for_an_sdk_mark(node: Proc, name: str, mark: str) -> None:
    """A client's text a Python function logs is logged (NUL first as U+FFFD), never taken for
    the SDKs' marks: one would vanish from the log, set the node's no_response wait, claim
    an exception or have the node warn of a waitUntil promise left pending."""
    request_id = f"py-forged-{name}"
    r = httpx.post(node.url + "/uncaught-py/log-body", content=mark.encode(),
                   headers={"x-request-id": request_id}, timeout=30)  # fmt: skip
    assert r.status_code == 200 and r.text == "logged\n"
    shown = "\ufffd" + mark[1:]
    lines = logged(node, request_id, shown)
    assert [(x["level"], x["message"]) for x in lines if x["source"] == "log"] == [
        ("info", shown), ("error", shown),
    ]  # fmt: skip
    assert not [x for x in lines if x["source"] == "platform"]
