"""Hostile and odd requests against a real node (property-based): never a crash or a platform
500, always a sane request id, and the echo function sees exactly what was sent.

Requests go out over raw sockets (so header bytes, framing and targets are exactly what the
strategy drew, including what httpx refuses to send) and through httpx (a real client).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge.node.tracecontext import parse_traceparent

from .cluster import FUNCTION, converge, follower, start_control, upload
from .conftest import (
    EXAMPLES,
    FIXTURES,
    SHARED_GEOIP,
    NodeFactory,
    Proc,
    free_port,
    roomy_function,
)
from .otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.toolchain

FUZZ = settings(
    max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Headers whose meaning is framing or the connection: drawn by their own strategies, or not at
# all (an Upgrade or Expect would switch the conversation away from one request, one answer).
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
           "upgrade", "expect", "trailer", "proxy-connection", "x-request-id"}  # fmt: skip
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def node(
    start_module_node: Callable[..., Proc],
    built: Callable[[Path], Path],
    receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Proc:
    projects = [EXAMPLES / "python" / "echo", FIXTURES / "functions" / "mirror"]
    where = tmp_path_factory.mktemp("functions")
    # Framing and echoing are tested, not speed: a 504 here was a first request on a busy CI
    # machine, not a fault of the node.
    body = "".join(roomy_function(p, built(p), where / p.name) for p in projects)
    # No catch-all route: paths elsewhere are the platform's 404.
    body += '[[route]]\nroute = "*/echo"\nfunction = "echo-python"\n'
    body += '[[route]]\nroute = "*/mirror"\nfunction = "mirror"\n'
    # Traced, so hostile trace context reaches span recording and export too.
    body += f'[tracing]\notlp_endpoint = "{receiver.url}"\n'
    geoip = SHARED_GEOIP / "GeoIP2-City-Test.mmdb"  # every drawn client address is looked up
    node = f'trusted_proxies = ["127.0.0.1/32"]\ngeoip_db = "{geoip}"\n'
    return start_module_node(body, node=node)


# --- strategies -----------------------------------------------------------------------------------

tokens = st.text(alphabet=TCHAR, min_size=1, max_size=24)
methods = st.one_of(st.sampled_from(METHODS), tokens)
# Field values as h11 accepts them: visible ASCII, obs-text and inner spaces or tabs.
value_bytes = st.binary(max_size=80).map(
    lambda b: bytes(c for c in b if c in (0x20, 0x09) or 0x21 <= c <= 0x7E or c >= 0x80).strip(
        b" \t"
    )
)
ascii_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
# The headers the node itself reads, with garbage and near-misses.
special_values: dict[str, st.SearchStrategy[str]] = {
    "x-forwarded-for": st.one_of(
        ascii_values,
        st.lists(
            st.sampled_from(
                [
                    "1.2.3.4",
                    "::1",
                    "[::1]",
                    "127.0.0.1",
                    "unknown",
                    "",
                    "999.1.1.1",
                    "fe80::1%eth0",
                    " 10.0.0.1 ",
                    "81.2.69.142",
                ]
            ),
            max_size=6,
        ).map(", ".join),
    ),
    "traceparent": st.one_of(
        ascii_values,
        st.tuples(
            st.sampled_from(["00", "ff", "01", "0g", "FF"]),
            st.sampled_from(["0" * 32, "4bf92f3577b34da6a3ce929d0e0e4736", "X" * 32, "ab"]),
            st.sampled_from(["0" * 16, "00f067aa0ba902b7", "zz"]),
            st.sampled_from(["00", "01", "ff", "1"]),
            st.sampled_from(["", "-", "-extra", "-" + "a" * 600]),
        ).map(lambda t: "-".join(t[:4]) + t[4]),
    ),
    "tracestate": st.one_of(ascii_values, st.just("a=" + "b" * 600), st.just("k=v,k2=v2")),
    "x-request-id": st.one_of(
        ascii_values,
        st.text(alphabet="Aa0._:-", min_size=1, max_size=200),
        st.just(""),
        st.just("x" * 128),
        st.just("x" * 129),
    ),
    "cookie": st.one_of(
        ascii_values,
        st.sampled_from(['a=b; c="d', "=;;=", '$Version=1; a="\\"', "a=" + "\\x" * 40, "a b=c"]),
    ),
}
hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "LOCALHOST", "example.com.", "example.com:8080", "[::1]",
                     "[::1]:80", "[::1", "::1", "a:b:c", ":", "", "Only.Example", "x" * 300,
                     "host:notaport", "[", "]"]),
    ascii_values.map(str.strip),
)  # fmt: skip
segments = st.one_of(
    st.sampled_from(["..", ".", "", "%2e%2e", "%2F", "%00", "%ff", "%", "%zz", "%C3%BC",
                     "%E2%80%AE", "a;b", "~", "x" * 300]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                   exclude_characters="?#"), max_size=20),
)  # fmt: skip
paths = st.tuples(
    st.sampled_from(
        [
            "/echo",
            "/mirror",
            "/",
            "//echo",
            "/echo/",
            "/nope",
            "/healthz",
            "/readyz",
            "/metrics",
            "http://h/echo",
            "HTTPS://[::1]:1/mirror",
            "http://u@h",
            "http:///echo",
        ]
    ),
    st.lists(segments, max_size=6),
).map(lambda t: t[0] + "/".join(["", *t[1]]))
queries = st.one_of(
    st.just(""),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
            max_size=60).map(lambda q: "?" + q),
)  # fmt: skip


@dataclass
class Raw:
    """One request as the bytes to send, and what echo should report back."""

    method: str
    target: str
    headers: list[tuple[str, bytes]]
    body: bytes = b""
    framing: str = "length"  # "length", "chunked", "short" (body cut), "long" (more sent)

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1".encode()]
        lines += [name.encode() + b": " + value for name, value in self.headers]
        body = self.body
        if self.framing == "chunked":
            lines.append(b"transfer-encoding: chunked")
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _chunks(body)) + b"0\r\n\r\n"
        elif self.framing == "short":
            lines.append(b"content-length: %d" % (len(body) + 10))
        elif self.framing == "long":
            lines.append(b"content-length: %d" % (len(body) // 2))
        elif body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: %d" % len(body))
        lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _chunks(body: bytes) -> list[bytes]:
    return [body[i : i + 7] for i in range(0, len(body), 7)] if body else []


@st.composite
def raw_requests(draw: st.DrawFn) -> Raw:
    method = draw(methods)
    target = draw(paths) + draw(queries)
    headers: list[tuple[str, bytes]] = [("host", draw(hosts).encode())]
    names = st.one_of(tokens.filter(lambda n: n.lower() not in FRAMING),
                      st.sampled_from(sorted(special_values)))  # fmt: skip
    for _ in range(draw(st.integers(0, 12))):
        name = draw(names)
        if name in special_values:
            value = draw(special_values[name]).strip(" \t").encode()
        else:
            value = draw(value_bytes)
        headers.append((name, value))
    if draw(st.booleans()):  # the same header several times: all must reach the function
        name = draw(tokens.filter(lambda n: n.lower() not in FRAMING))
        headers += [(name, draw(value_bytes)) for _ in range(draw(st.integers(2, 5)))]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "length", "chunked", "short", "long"]))
    return Raw(method, target, headers, body, framing)


# --- a raw HTTP/1.1 exchange ----------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


def exchange(url: str, data: bytes, head: bool = False) -> Answer:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # answered and closed before all was sent (a 413, a framing error)
            pass
        received = b""
        while chunk := _recv(s):
            received += chunk
    head_part, sep, rest = received.partition(b"\r\n\r\n")
    assert sep, f"no complete answer: {received[:200]!r}"
    status_line, *lines = head_part.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines)
    headers = [(k.strip().lower(), v.strip()) for k, _, v in fields]
    answer = Answer(int(status_line.split(" ")[1]), headers, b"")
    length = answer.header("content-length")
    if head:
        return answer
    answer.body = rest[: int(length)] if length is not None else rest
    return answer


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except ConnectionResetError:  # the answer came before a reset; what was read counts
        return b""


# --- properties -----------------------------------------------------------------------------------


def check_answer(answer: Answer) -> None:
    """What holds for every answer: no 5xx; a request id; errors are JSON with `error`."""
    assert answer.status < 500, (answer.status, answer.body[:500])
    rid = answer.header("x-request-id")
    if rid is None:
        # Only the HTTP server's own refusal of a malformed message (or of headers over its
        # 64 KiB limit) lacks our id: the node never saw the request.
        assert answer.status in (400, 431), answer
        return
    assert REQUEST_ID_RE.match(rid), rid
    if answer.status >= 400 and answer.body:
        doc = json.loads(answer.body)
        assert isinstance(doc["error"], str) and doc["request_id"] == rid


@FUZZ
@given(req=raw_requests())
def test_raw_requests_never_crash_and_echo_faithfully(node: Proc, req: Raw) -> None:
    answer = exchange(node.url, req.encode(), head=req.method == "HEAD")
    event(f"status {answer.status}")
    check_answer(answer)
    if answer.header("x-edge-region") is not None or answer.status == 404:  # a function's path
        answered = parse_traceparent(answer.header("traceparent") or "")
        assert answered is not None, answer.headers
        given = next((v for n, v in req.headers if n.lower() == "traceparent"), None)
        caller = parse_traceparent(given.decode("latin-1")) if given is not None else None
        if caller is not None:  # the caller's trace goes on; any other starts a new one
            assert answered.trace_id == caller.trace_id
    if answer.status != 200 or req.method == "HEAD" or req.framing in ("short", "long"):
        return
    path = req.target.split("?")[0]
    if path.startswith("/mirror") and req.framing != "long":
        assert answer.body == req.body
    elif path.startswith("/echo") and answer.header("content-type") == "application/json":
        echoed = json.loads(answer.body)
        # Hypercorn upper-cases the method token (RFC 9110 calls it case-sensitive).
        assert echoed["method"] == req.method.upper()
        assert echoed["request_id"] == answer.header("x-request-id")
        assert echoed["body"] == req.body.decode("utf-8", errors="replace")
        # Whatever x-forwarded-for said, the function gets a plain address (no zone text).
        assert "%" not in echoed["client_ip"] and ipaddress.ip_address(echoed["client_ip"])
        got = echoed["headers"]
        for name in {n.lower() for n, _ in req.headers} - FRAMING:
            sent = [v.decode("latin-1") for n, v in req.headers if n.lower() == name]
            assert [v for n, v in got if n == name] == sent, name


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    path=paths.filter(lambda p: p.startswith("/")),  # httpx sends origin-form
    params=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=5),
    headers=st.lists(
        st.tuples(tokens.filter(lambda n: n.lower() not in FRAMING), ascii_values.map(str.strip)),
        max_size=10,
    ),
    body=st.binary(max_size=500),
    chunked=st.booleans(),
)  # fmt: skip
def test_httpx_requests_never_crash(
    node: Proc, method: str, path: str, params: list[tuple[str, str]],
    headers: list[tuple[str, str]], body: bytes, chunked: bool,
) -> None:  # fmt: skip
    content: bytes | list[bytes] = [body[:100], body[100:]] if chunked else body
    with httpx.Client(timeout=15) as client:
        r = client.request(method, node.url + path, params=params, headers=headers,
                           content=iter(content) if chunked else content)  # fmt: skip
    check_answer(Answer(r.status_code, list(r.headers.multi_items()), r.content))
    if r.status_code == 200 and path.startswith("/mirror") and method != "HEAD":
        assert r.content == body


@pytest.mark.parametrize("count", [1, 99])
def test_many_headers_reach_the_function_in_order(node: Proc, count: int) -> None:
    """A request with as many headers as the HTTP server takes: all reach echo, in order."""
    headers = [("x-many", b"v%d\xe9" % i) for i in range(count)]
    req = Raw("GET", "/echo", [("host", b"h"), *headers])
    answer = exchange(node.url, req.encode())
    check_answer(answer)
    got = [v for n, v in json.loads(answer.body)["headers"] if n == "x-many"]
    assert got == [v.decode("latin-1") for _, v in headers]


@pytest.mark.parametrize(
    ("target", "url", "host"),
    [
        ("http://other.example/echo/a%20b?q=1", "http://other.example/echo/a%20b?q=1",
         "other.example"),
        ("HTTP://u@other.example:8080/echo", "http://other.example:8080/echo",
         "other.example:8080"),
    ],
)  # fmt: skip
def test_an_absolute_target_is_served_like_its_origin_form(
    node: Proc, target: str, url: str, host: str
) -> None:
    """A server must accept `GET http://host/path` (RFC 9112 3.2.2): its host beats Host."""
    raw = Raw("GET", target, [("host", b"ignored.example")])
    answer = exchange(node.url, raw.encode())
    check_answer(answer)
    echoed = json.loads(answer.body)
    assert echoed["url"] == url and ["host", host] in echoed["headers"]
    assert not any(v == "ignored.example" for _, v in echoed["headers"])
    health = exchange(node.url, Raw("GET", "http://x/healthz", [("host", b"h")]).encode())
    assert health.status == 200 and json.loads(health.body)["status"] == "ok"


def test_ops_answers_carry_a_request_id_and_refuse_in_json(node: Proc) -> None:
    given = httpx.get(node.url + "/healthz", headers={"x-request-id": "ops-1"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "ops-1"
    assert REQUEST_ID_RE.match(httpx.get(node.url + "/metrics").headers["x-request-id"])
    refused = httpx.post(node.url + "/readyz", content=b"x")
    assert refused.status_code == 405
    assert set(refused.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert refused.headers["connection"] == "close"  # its body was not read
    assert refused.json()["error"] == "method_not_allowed"
    assert refused.json()["request_id"] == refused.headers["x-request-id"]


def test_an_error_before_the_body_is_read_closes_the_connection(node: Proc) -> None:
    """A 404 answered before the body is read ends the connection, and says so: a keep-alive
    client then sends its next request on a new connection (it used to fail now and then)."""
    with httpx.Client(base_url=node.url, timeout=15) as client:
        for _ in range(20):
            refused = client.post("/nope", content=iter([b"a" * 10, b"b" * 10]))
            assert refused.status_code == 404 and refused.headers["connection"] == "close"
            mirrored = client.post("/mirror", content=b"kept")
            assert mirrored.content == b"kept" and "connection" not in mirrored.headers


@FUZZ
@given(
    cookies=st.lists(
        st.one_of(special_values["cookie"], value_bytes.map(lambda b: b.decode("latin-1"))),
        max_size=3,
    )
)
def test_hostile_cookies_on_a_cookie_sticky_canary(canary_node: Proc, cookies: list[str]) -> None:
    """A canary split by cookie parses the caller's cookie header: garbage (an illegal name
    like `<`) falls back to the address, it never fails the request."""
    headers = [("host", b"h"), *(("cookie", c.strip(" \t").encode("latin-1")) for c in cookies)]
    answer = exchange(canary_node.url, Raw("GET", "/", headers).encode())
    check_answer(answer)
    assert answer.status == 200 and answer.body in (b"version one\n", b"version two\n")


@pytest.fixture(scope="module")
def canary_node(
    start_module_node: NodeFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("canary")
    control = start_control(tmp / "control", free_port(), tmp / "control.log")
    try:
        node = follower(start_module_node, control, "fuzz-node", "fuzz-region", tmp / "state")
        with control.client() as client:
            v1, v2 = upload(client, tmp, "version one"), upload(client, tmp, "version two")
            converge(client, client.deploy(FUNCTION, v1, ["*/"]))
            converge(client, client.canary(FUNCTION, v2, 50, "cookie:sid"))
        yield node
    finally:
        control.proc.stop()


def test_nodes_survive_the_run(node: Proc, canary_node: Proc, receiver: OtlpReceiver) -> None:
    """Last in the module: both nodes still answer, and logged no unhandled exception; the
    traced one exported spans."""
    deadline = time.monotonic() + 15
    while receiver.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert receiver.requests > 0
    for n in (node, canary_node):
        assert n.proc.poll() is None
        assert httpx.get(n.url + "/healthz").json()["status"] == "ok"
        assert "Traceback" not in n.log(), n.log()[-3000:]
