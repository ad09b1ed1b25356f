"""What the SDKs promise a function's author, seen from outside: a real node on 127.0.0.1.

An exception a handler lets out ends the request with 500 `trap` and leaves its message in the
function's log, one log line per line; stdout arrives whole lines at a time; the JS SDK's
request bodies are exact bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import FIXTURES, Proc

pytestmark = pytest.mark.toolchain

FUNCTIONS = ["uncaught-py", "uncaught-js", "mirror-js", "headers-js", "response-py", "console-js"]


@pytest.fixture(scope="module")
def node(start_module_node: Callable[..., Proc], built: Callable[[Path], Path]) -> Proc:
    body = ""
    for name in FUNCTIONS:
        built(FIXTURES / "functions" / name)
        body += f'[[function]]\nproject = "{FIXTURES / "functions" / name}"\n'
        body += f'[[route]]\nroute = "*/{name}"\nfunction = "{name}"\n'
    return start_module_node(body)


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


def test_python_exception_is_a_trap_with_its_traceback_in_the_log(node: Proc) -> None:
    r = get(node, "/uncaught-py", "py-raise")
    assert r.status_code == 500 and r.json()["error"] == "trap"
    lines = logged(node, "py-raise", "function trapped")
    errors = [line["message"] for line in lines if line["source"] == "stderr"]
    assert errors[0] == "Uncaught exception in the request handler:"
    assert errors[1] == "Traceback (most recent call last):"
    assert errors[-1] == "ValueError: boom from python"  # one line, not four pieces
    assert all(line["level"] == "error" for line in lines if line["source"] == "stderr")
    # componentize-py's own report of the exception (a Rust panic) is not added to it.
    assert not any("panicked" in m or "RUST_BACKTRACE" in m for m in errors)
    assert lines[-1]["source"] == "platform"


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
            "Uncaught TypeError: handle(req) returned a Promise: it must be synchronous (no async)",
        ),
    ],
)
def test_javascript_exception_is_a_trap_with_its_message_in_the_log(
    node: Proc, path: str, first: str
) -> None:
    request_id = "js" + path.replace("/", "-")
    r = get(node, path, request_id)
    assert r.status_code == 500 and r.json()["error"] == "trap"
    lines = logged(node, request_id, "function trapped")
    own = [line for line in lines if line["source"] == "log"]
    assert own[0]["message"] == first and own[0]["level"] == "error"
    if "Error" in first:  # an Error has a stack, one line per frame
        assert len(own) > 1 and all(line["message"].startswith("    at ") for line in own[1:])
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
