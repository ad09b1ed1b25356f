"""Code written for Spin's Python SDK or for Cloudflare's Python Workers runs as written, seen
from outside: a real node on 127.0.0.1 with the GeoIP test database, trusting 127.0.0.1's
X-Forwarded-For, serving the fixtures spin-py (a subclass of `spin_sdk.http.IncomingHandler`
named `IncomingHandler`, with `spin_sdk.variables`), worker-py (`class Default(WorkerEntrypoint)`)
and worker-py-onfetch (the older top-level `on_fetch`), and the examples in `edge dev`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edge.build import build_function
from edge.errors import BuildFailed

from .conftest import GEO_NODE, LONDON, Proc, fixture_routes, spin_host_headers
from .test_build import copy_example
from .test_sdk import exception_answer, get, logged

pytestmark = pytest.mark.toolchain



@pytest.fixture(scope="module")
def node(start_module_node: Callable[..., Proc], built: Callable[[Path], Path]) -> Proc:
    functions = ["spin-py", "worker-py", "worker-py-onfetch"]
    return start_module_node(fixture_routes(functions, built), node=GEO_NODE)


def test_spin_incoming_handler_answers(node: Proc) -> None:
    r = httpx.get(node.url + "/spin-py/", timeout=30)
    assert r.status_code == 200 and r.text == "Hello from Spin's Python SDK\n"
    assert r.headers["content-type"] == "text/plain"


def test_spin_request_has_method_uri_joined_headers_and_the_body(node: Proc) -> None:
    sent = [("x-rep", "one"), ("x-rep", "two"), ("content-type", "text/plain")]
    r = httpx.post(node.url + "/spin-py/echo?q=1&r=a%20b", content="héllo".encode(),
                   headers=sent, timeout=30)  # fmt: skip
    assert r.status_code == 201 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "method": "POST", "uri": "/spin-py/echo?q=1&r=a%20b", "rep": "one, two",
        "type": "text/plain", "text": "héllo", "bytes": 6,
    }  # fmt: skip


def test_spin_request_has_the_spin_hosts_headers(node: Proc) -> None:
    """As for Spin's JS shapes (test_js_compat): a client's own spin-* headers are dropped."""
    url = node.url + "/spin-py/spin-headers/a%20b?q=1"
    sent = {"x-forwarded-for": LONDON, "spin-path-info": "/forged", "spin-full-url": "forged"}
    r = httpx.get(url, headers=sent, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == spin_host_headers(url, "/spin-py/spin-headers/a%20b")


def test_spin_variables_are_config_values(node: Proc) -> None:
    r = httpx.get(node.url + "/spin-py/variable", timeout=30)
    assert r.status_code == 200 and r.text == "Hello from a Spin variable"
    exception_answer(get(node, "/spin-py/unset", "spin-unset"), "spin_sdk.variables.Err",
                     "spin-unset")  # fmt: skip
    logged(node, "spin-unset", "function raised")


def test_spin_bodies_are_bytes_both_ways(node: Proc) -> None:
    r = httpx.get(node.url + "/spin-py/binary", timeout=30)
    assert r.status_code == 200 and r.content == bytes(range(256))
    r = httpx.get(node.url + "/spin-py/empty", timeout=30)
    assert r.status_code == 204 and r.content == b""


def test_spin_send_has_no_network_and_says_so(node: Proc) -> None:
    exception_answer(get(node, "/spin-py/send", "spin-send"), "NotImplementedError", "spin-send")
    lines = logged(node, "spin-send", "function raised")
    assert any("edge functions have no outbound HTTP" in line["message"] for line in lines)


def test_spin_handler_returning_something_else_is_a_typed_exception(node: Proc) -> None:
    exception_answer(get(node, "/spin-py/not-a-response", "spin-str"), "TypeError", "spin-str")
    lines = logged(node, "spin-str", "function raised")
    text = json.dumps(lines)
    assert "must return a spin_sdk.http.Response, got str" in text


def test_spin_status_that_is_not_an_int_is_a_typed_exception(node: Proc) -> None:
    exception_answer(get(node, "/spin-py/bad-status", "spin-status"), "TypeError", "spin-status")
    lines = logged(node, "spin-status", "function raised")
    assert "Response status must be an int, got str" in json.dumps(lines)


def test_spin_base_class_imported_but_not_subclassed_fails_the_build(tmp_path: Path) -> None:
    project = copy_example("python", "spin", tmp_path)
    (project / "app.py").write_text("from spin_sdk.http import IncomingHandler\n")
    with pytest.raises(BuildFailed) as info:
        build_function(project, cache_dir=tmp_path / "cache")
    assert "define Spin's `class IncomingHandler(spin_sdk.http.IncomingHandler)`" in (
        info.value.output
    )


def test_spin_example_in_edge_dev_with_a_var_as_its_variable(
    tmp_path: Path, start_dev: Callable[..., Proc]
) -> None:
    project = copy_example("python", "spin", tmp_path)
    dev = start_dev(project, "--var", "greeting=Hi from --var")
    r = httpx.get(dev.url + "/", headers={"x-name": "ada"}, timeout=30)
    assert r.status_code == 200 and r.text == "Hi from --var, ada!\n"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"


def test_python_worker_answers_with_env_and_the_body(node: Proc) -> None:
    r = httpx.post(node.url + "/worker-py/", content="ada", timeout=30)
    assert r.status_code == 200 and r.text == "Hello from a Python Worker, ada!\n"
    assert r.headers["content-type"] == "text/plain;charset=UTF-8"  # as the Web's Response


def test_python_worker_request_has_headers_json_and_cf(node: Proc) -> None:
    sent = [("x-forwarded-for", LONDON), ("x-rep", "one"), ("x-rep", "two")]
    r = httpx.post(node.url + "/worker-py/echo", json={"a": [1, "b"]}, headers=sent, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "method": "POST", "got": {"a": [1, "b"]}, "rep": "one, two", "missing": None,
        "country": "GB", "city": "London", "latitude": "51.5142",
    }  # fmt: skip
    local = httpx.post(node.url + "/worker-py/echo", json={}, timeout=30).json()
    assert local["country"] is None and local["latitude"] is None  # no geo for 127.0.0.1


def test_python_worker_errors_are_typed(node: Proc) -> None:
    exception_answer(get(node, "/worker-py/unset", "wp-unset"), "AttributeError", "wp-unset")
    exception_answer(get(node, "/worker-py/fetch", "wp-fetch"), "NotImplementedError", "wp-fetch")
    lines = logged(node, "wp-fetch", "function raised")
    assert any("edge functions have no outbound HTTP" in line["message"] for line in lines)
    exception_answer(get(node, "/worker-py/not-a-response", "wp-str"), "TypeError", "wp-str")
    lines = logged(node, "wp-str", "function raised")
    assert "must return a workers.Response, got str" in json.dumps(lines)


def test_python_worker_status_that_is_not_an_int_is_a_typed_exception(node: Proc) -> None:
    exception_answer(get(node, "/worker-py/bad-status", "wp-status"), "TypeError", "wp-status")
    lines = logged(node, "wp-status", "function raised")
    assert "Response status must be an int, got str" in json.dumps(lines)


def test_python_worker_reads_the_body_as_bytes(node: Proc) -> None:
    r = httpx.post(node.url + "/worker-py/raw", content=bytes(range(256)), timeout=30)
    assert r.status_code == 200 and r.content == bytes(reversed(range(256)))


def test_python_worker_awaits_its_own_coroutines_but_nothing_that_waits(node: Proc) -> None:
    r = httpx.get(node.url + "/worker-py/sleep0", timeout=30)
    assert r.status_code == 200 and r.text == "awaited a coroutine of its own"
    # asyncio.sleep(1) needs an event loop: there is none to wait in.
    exception_answer(get(node, "/worker-py/sleep", "wp-sleep"), "RuntimeError", "wp-sleep")


def test_python_worker_wait_until_runs_before_the_answer_leaves(node: Proc) -> None:
    r = get(node, "/worker-py/wait", "wp-wait")
    assert r.status_code == 202 and r.text == "answered" and r.headers["x-kind"] == "wait"
    lines = logged(node, "wp-wait", "waitUntil ran")
    assert [line["source"] for line in lines if line["message"] == "waitUntil ran"] == ["stdout"]
    r = get(node, "/worker-py/wait-fails", "wp-wait-fails")
    assert r.status_code == 200 and r.text == "answered anyway"
    lines = logged(node, "wp-wait-fails", "waitUntil work raised ValueError: late failure")
    assert lines[-1]["level"] == "error"


def test_python_worker_redirects_and_binary_bodies(node: Proc) -> None:
    r = httpx.get(node.url + "/worker-py/redirect", timeout=30)
    assert r.status_code == 301 and r.headers["location"] == "https://example.com/elsewhere"
    r = httpx.get(node.url + "/worker-py/bytes", timeout=30)
    assert r.status_code == 200 and r.content == bytes(range(256))


def test_python_worker_headers_set_append_and_delete_as_the_web(node: Proc) -> None:
    sent = {"x-drop": "gone", "x-keep": "kept"}
    r = httpx.get(node.url + "/worker-py/headers", headers=sent, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"many": "a, b", "all": ["a", "b"], "has_drop": False, "host": False}
    assert r.headers.get_list("x-set") == ["two"]  # set replaced, whatever the case
    assert r.headers.get_list("x-many") == ["a", "b"]  # append kept both, in order
    assert r.headers["x-keep"] == "kept" and "x-drop" not in r.headers
    assert r.headers["content-type"] == "application/json"  # Response.json added it to them


def test_python_worker_on_fetch_shape(node: Proc) -> None:
    r = httpx.put(node.url + "/worker-py-onfetch/", timeout=30)
    assert r.status_code == 201 and r.text == "on_fetch: PUT hi\n"


def test_python_worker_example_in_edge_dev_with_a_var_as_env(
    tmp_path: Path, start_dev: Callable[..., Proc]
) -> None:
    project = copy_example("python", "worker", tmp_path)
    dev = start_dev(project, "--var", "GREETING=Hi from --var")
    r = httpx.get(dev.url + "/", timeout=30)
    assert r.status_code == 200 and r.text == "Hi from --var, visitor from somewhere!\n"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    posted = httpx.post(dev.url + "/", json={"a": [1, "two"]}, timeout=30)
    assert posted.json() == {"received": {"a": [1, "two"]}}
