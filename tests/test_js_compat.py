"""Code written for Cloudflare Workers, Fastly Compute or Spin runs as written, seen from outside:
a real node on 127.0.0.1 with the GeoIP test database, trusting 127.0.0.1's X-Forwarded-For.

The fixtures use Web globals only (Request, Response, Headers, ReadableStream) and the module
shapes: Workers' `export default { fetch }` and `WorkerEntrypoint` class (from
"cloudflare:workers"), Spin's `handleRequest` answering with a plain object and `handler(req,
res)` with its ResponseBuilder (from "@fermyon/spin-sdk"), the service
worker's fetch listener, and our own `handle`, async and answering with a Web Response.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import EXAMPLES, FIXTURES, GEO_NODE, LONDON, Proc, fixture_routes, spin_host_headers
from .test_sdk import exception_answer, get, logged

pytestmark = pytest.mark.toolchain

FUNCTIONS = [
    "worker-cf", "worker-fastly", "async-js", "worker-entrypoint", "spin-js", "spin-v2-js",
]  # fmt: skip


@pytest.fixture(scope="module")
def node(start_module_node: Callable[..., Proc], built: Callable[[Path], Path]) -> Proc:
    return start_module_node(fixture_routes(FUNCTIONS, built), node=GEO_NODE)


def test_cloudflare_worker_gets_env_cf_and_headers(node: Proc) -> None:
    sent = [("x-forwarded-for", LONDON), ("x-rep", "one"), ("x-rep", "two")]
    r = httpx.get(node.url + "/worker-cf/hello", headers=sent, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "greeting": "Hello from a Worker",  # env.GREETING from edge.toml's [config]
        "unset": True,
        "country": "GB",
        "city": "London",
        "continent": "EU",
        "method": "GET",
        "host": node.url.removeprefix("http://"),  # dropped by a bare Web Request, kept here
        "rep": "one, two",
    }
    local = httpx.get(node.url + "/worker-cf/hello", timeout=30).json()
    assert local["country"] is None and local["city"] is None  # no geo: absent, as on Workers


def test_cloudflare_worker_wait_until_runs_before_the_answer(node: Proc) -> None:
    assert get(node, "/worker-cf/later", "cf-wait-until").status_code == 200
    lines = logged(node, "cf-wait-until", "waitUntil ran for /worker-cf/later")
    assert [line["level"] for line in lines if line["source"] == "log"] == ["info"]


def test_cloudflare_worker_json_body_round_trip(node: Proc) -> None:
    doc = {"name": "héllo ✓", "n": [1, 2.5, None], "nested": {"ok": True}}
    r = httpx.post(node.url + "/worker-cf/json", json=doc, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {"got": doc, "type": "application/json"}


def test_cloudflare_worker_binary_body_is_exact_bytes(node: Proc) -> None:
    binary = bytes(range(256)) * 4
    r = httpx.post(node.url + "/worker-cf/bytes", content=binary, timeout=30)
    assert r.status_code == 200 and r.content == binary[::-1]


def test_web_response_keeps_status_and_repeated_headers(node: Proc) -> None:
    r = httpx.get(node.url + "/worker-cf/teapot", timeout=30)
    assert r.status_code == 418 and r.text == "short and stout\n"
    assert r.headers["content-type"] == "text/plain" and r.headers["x-worker"] == "cf"
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    # Headers joins other repeated names into one value, as on Workers.
    assert r.headers.get_list("x-multi") == ["one, two"]
    assert r.headers["content-length"] == str(len(r.content))


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/worker-cf/plain-object", "fetch(request, env, ctx) must return a Response, got Object"),
        ("/worker-fastly/silent", "no fetch listener called event.respondWith()"),
    ],
)
def test_an_answer_that_is_not_a_response_is_a_typed_exception(
    node: Proc, path: str, said: str
) -> None:
    request_id = "not-a-response" + path.replace("/", "-")
    exception_answer(get(node, path, request_id), "TypeError", request_id)
    lines = logged(node, request_id, f"Uncaught TypeError: {said}")
    assert [line["level"] for line in lines if line["source"] == "log"] == ["error"]


def test_worker_entrypoint_class_gets_env_and_ctx(node: Proc) -> None:
    r = get(node, "/worker-entrypoint/hello", "entrypoint")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "greeting": "Hello from a WorkerEntrypoint",  # this.env, from edge.toml's [config]
        "moduleEnv": "Hello from a WorkerEntrypoint",  # import { env } from "cloudflare:workers"
        "unset": True,
        "method": "GET",
        "country": None,
        "sameEnv": True,
    }
    lines = logged(node, "entrypoint", "waitUntil for /worker-entrypoint/hello")
    assert [line["level"] for line in lines if line["source"] == "log"] == ["info"]
    r = httpx.get(
        node.url + "/worker-entrypoint/", headers={"x-forwarded-for": LONDON}, timeout=30
    )
    assert r.json()["country"] == "GB"


def test_worker_entrypoint_exception_is_typed(node: Proc) -> None:
    exception_answer(get(node, "/worker-entrypoint/throw", "entry-throw"), "SyntaxError",
                     "entry-throw")  # fmt: skip
    logged(node, "entry-throw", "Uncaught SyntaxError: from a WorkerEntrypoint")


def test_spin_handle_request_answers_with_a_plain_object(node: Proc) -> None:
    r = httpx.get(node.url + "/spin-js/", timeout=30)
    assert r.status_code == 200 and r.text == "Hello from Spin's handleRequest\n"
    assert r.headers["x-spin"] == "object"
    sent = [("x-rep", "one"), ("x-rep", "two"), ("content-type", "text/plain")]
    url = node.url + "/spin-js/echo?q=1"
    r = httpx.post(url, content="héllo".encode(), headers=sent, timeout=30)
    assert r.status_code == 201 and r.headers["x-spin"] == "map"
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "method": "POST", "text": "héllo", "bytes": 6, "rep": "one, two", "type": "text/plain",
        "uri": "/spin-js/echo?q=1", "fullUrl": url,
    }  # fmt: skip
    r = httpx.post(node.url + "/spin-js/json", json={"name": "ada"}, timeout=30)
    assert r.status_code == 200 and r.text == "ada" and r.headers["content-type"] == "text/plain"
    r = httpx.get(node.url + "/spin-js/empty", timeout=30)
    assert r.status_code == 204 and r.content == b""


@pytest.mark.parametrize("function", ["spin-js", "spin-v2-js"])
def test_spin_request_has_the_spin_hosts_headers(node: Proc, function: str) -> None:
    """Spin's host adds these to every request; both of Spin's JS shapes see them, a client's
    own of those names dropped. The route headers say `/...`: the function does not know the
    node's route, and is taken for a Spin application's only component at `route = "/..."`."""
    url = node.url + f"/{function}/spin-headers/a%20b?q=1"
    sent = {"x-forwarded-for": LONDON, "spin-path-info": "/forged", "spin-full-url": "forged"}
    r = httpx.get(url, headers=sent, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == spin_host_headers(url, f"/{function}/spin-headers/a%20b")


def test_spin_answer_without_a_status_is_a_typed_exception(node: Proc) -> None:
    exception_answer(get(node, "/spin-js/no-status", "spin-no-status"), "TypeError",
                     "spin-no-status")  # fmt: skip
    logged(
        node,
        "spin-no-status",
        "Uncaught TypeError: handleRequest(request) must return a Response or "
        "{ status, headers, body }, got Object",
    )


def test_spin_v2_handler_answers_through_the_response_builder(node: Proc) -> None:
    r = httpx.get(node.url + "/spin-v2-js/", timeout=30)
    assert r.status_code == 200 and r.text == "Hello from Spin's handler(req, res)\n"
    r = httpx.get(node.url + "/spin-v2-js/parts", timeout=30)
    assert r.status_code == 207 and r.text == "part one, part two"
    assert r.headers["content-type"] == "text/plain" and r.headers["x-spin"] == "v2"
    r = httpx.post(node.url + "/spin-v2-js/json", json={"a": [1, "b"]}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"got": {"a": [1, "b"]}, "builder": True}
    r = httpx.get(node.url + "/spin-v2-js/no-content", timeout=30)
    assert r.status_code == 204 and r.content == b""


def test_spin_variables_are_config_values(node: Proc) -> None:
    r = httpx.get(node.url + "/spin-v2-js/variables", timeout=30)
    assert r.status_code == 200
    assert r.json() == {"set": "Hello from a Spin variable", "unset": None}


def test_spin_v2_builder_takes_headers_and_any_body_send_takes(node: Proc) -> None:
    r = httpx.get(node.url + "/spin-v2-js/set-headers", timeout=30)
    assert r.status_code == 200 and r.text == "a,b\n"
    assert r.headers["content-type"] == "text/csv" and r.headers["x-spin"] == "headers"
    r = httpx.get(node.url + "/spin-v2-js/send-stream", timeout=30)
    assert r.status_code == 200 and r.text == "streamed whole\n"
    r = httpx.get(node.url + "/spin-v2-js/send-form", timeout=30)
    assert r.status_code == 200 and r.text == "a=1&b=x+y"
    assert r.headers["content-type"].startswith("application/x-www-form-urlencoded")
    # A string sent whole is text, as a Response of it is on Spin.
    r = httpx.get(node.url + "/spin-v2-js/", timeout=30)
    assert r.headers["content-type"].startswith("text/plain")


def test_spin_v2_status_and_headers_are_those_of_the_first_write(node: Proc) -> None:
    """As on Spin, whose first write() sends them: status() and set() throw after it, with
    Spin's messages, and a later change to res.headers is not in the answer."""
    r = httpx.get(node.url + "/spin-v2-js/after-write", timeout=30)
    assert r.status_code == 200
    assert r.text == "first; Headers and Status already sent; Headers already sent; status 200"
    assert r.headers["x-before"] == "1"
    assert "x-after" not in r.headers and "x-late" not in r.headers


@pytest.mark.parametrize(("status", "error"), [(204, "TypeError"), (1000, "RangeError")])
def test_spin_v2_answer_no_response_can_be_made_of_is_the_handlers_exception(
    node: Proc, status: int, error: str
) -> None:
    """send() with a status a Response refuses (or a 204 with a body) throws in the handler,
    as on Spin: not an answer that never comes (500 no_response)."""
    request_id = f"spin-bad-status-{status}"
    r = get(node, f"/spin-v2-js/bad-status?status={status}", request_id)
    exception_answer(r, error, request_id)
    r = httpx.get(node.url + f"/spin-v2-js/bad-status?status={status}&retry=1", timeout=30)
    assert r.status_code == 502 and r.text == f"refused: {error}"


def test_spin_v2_handler_that_never_answers_is_a_typed_exception(node: Proc) -> None:
    exception_answer(get(node, "/spin-v2-js/silent", "spin-silent"), "TypeError", "spin-silent")
    logged(
        node,
        "spin-silent",
        "Uncaught TypeError: handler(req, res) finished without calling res.send() or res.end()",
    )


def test_spin_v2_error_after_the_answer_is_logged_and_the_answer_stands(node: Proc) -> None:
    r = get(node, "/spin-v2-js/after-send", "spin-after-send")
    assert r.status_code == 200 and r.text == "sent first\n"
    lines = logged(
        node,
        "spin-after-send",
        "handler(req, res) failed after answering: RangeError: thrown after the answer",
    )
    assert [line["level"] for line in lines if line["source"] == "log"] == ["error"]


def test_fastly_style_fetch_listener_with_client_address(node: Proc) -> None:
    r = httpx.post(
        node.url + "/worker-fastly/submit",
        content="form text",
        headers={"x-forwarded-for": LONDON},
        timeout=30,
    )
    assert r.status_code == 201 and r.headers["x-style"] == "fastly"
    assert r.json() == {
        "path": "/worker-fastly/submit",
        "method": "POST",
        "client": LONDON,
        "country": "GB",
        "text": "form text",
    }
    local = httpx.get(node.url + "/worker-fastly/", timeout=30).json()
    assert local["client"] == "127.0.0.1" and local["country"] is None


def test_fetch_rejects_with_a_reason_the_code_can_catch(node: Proc) -> None:
    r = httpx.get(node.url + "/worker-fastly/origin", timeout=30)
    assert r.status_code == 502
    assert r.text == "TypeError: fetch is not available: functions have no network access"


def test_async_handle_is_awaited(node: Proc) -> None:
    r = httpx.get(node.url + "/async-js/who", headers={"x-who": "ada"}, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"who": "ada", "region": "eu-west", "fallback": "dflt"}


def test_handle_may_answer_with_a_web_response_and_a_stream_body(node: Proc) -> None:
    r = httpx.get(node.url + "/async-js/web", timeout=30)
    assert r.status_code == 203 and r.text == "streamed body\n"
    assert r.headers["x-kind"] == "web"


def test_a_timer_with_a_delay_is_awaited_on_virtual_time(node: Proc) -> None:
    """A delay no longer throws (sdk/js/timers.js; more in test_js_timers)."""
    r = httpx.get(node.url + "/async-js/sleep", headers={"x-who": "ada"}, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"who": "ada", "region": "eu-west", "fallback": "dflt"}


def test_worker_example_in_edge_dev_with_a_var_as_env(
    tmp_path: Path, start_dev: Callable[..., Proc]
) -> None:
    project = tmp_path / "worker"
    shutil.copytree(EXAMPLES / "js" / "worker", project, ignore=shutil.ignore_patterns("build"))
    dev = start_dev(project, "--var", "GREETING=Hi from --var")
    r = httpx.get(dev.url + "/", headers={"x-forwarded-for": LONDON}, timeout=30)
    assert r.status_code == 200 and r.text.startswith("Hi from --var, visitor from ")
    assert r.text.endswith(", GB!\n")  # the city depends on which GeoIP database `edge dev` has
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    local = httpx.get(dev.url + "/", timeout=30)
    assert local.text == "Hi from --var, visitor from somewhere!\n"
    posted = httpx.post(dev.url + "/", json={"a": [1, "two"]}, timeout=30)
    assert posted.json() == {"received": {"a": [1, "two"]}}


def test_spin_example_in_edge_dev_with_a_var_as_its_variable(
    tmp_path: Path, start_dev: Callable[..., Proc]
) -> None:
    project = tmp_path / "spin"
    shutil.copytree(EXAMPLES / "js" / "spin", project, ignore=shutil.ignore_patterns("build"))
    dev = start_dev(project, "--var", "greeting=Hi from --var")
    r = httpx.get(dev.url + "/?name=ada", timeout=30)
    assert r.status_code == 200 and r.text == "Hi from --var, ada!\n"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    posted = httpx.post(dev.url + "/", content="body text", timeout=30)
    assert posted.json() == {"name": "world", "received": "body text"}


def test_spin_router_template_routes_as_on_spin(
    tmp_path: Path, start_dev: Callable[..., Proc]
) -> None:
    """`spin new http-js`'s Router, as written (the spin-router-js fixture), served at "/" as
    a Spin app's only component is: params, greedy and optional segments, query arrays, the
    handler chain, methods and the catch-all."""
    project = tmp_path / "spin-router-js"
    shutil.copytree(
        FIXTURES / "functions" / "spin-router-js", project, ignore=shutil.ignore_patterns("build")
    )
    dev = start_dev(project)

    def answer(path: str, method: str = "GET", body: str = "") -> tuple[int, str]:
        r = httpx.request(method, dev.url + path, content=body, timeout=30)
        return r.status_code, r.text

    assert answer("/") == (200, "hello universe")  # the catch-all after it changes nothing
    assert answer("/hello/ada") == (200, "hello ada")
    status, text = answer("/items/7/a/b%20c?x=1&x=2&y=3")
    assert status == 200 and json.loads(text) == {
        "params": {"id": "7", "rest": "a/b%20c"}, "query": {"x": ["1", "2"], "y": "3"},
        "route": "/items/:id/:rest+", "method": "GET",
    }  # fmt: skip
    assert answer("/maybe") == (200, "opt=none") and answer("/maybe/yes/") == (200, "opt=yes")
    assert answer("/chain") == (200, "second handler, builder: true, extra: []")
    assert answer("/echo", "POST", "hi") == (200, "echo: hi")
    assert answer("/echo") == (404, "not found")  # GET: only the catch-all matches
    assert answer("/hello/ada/more") == (404, "not found")
