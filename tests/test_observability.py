"""Tracing and function logs end to end, as processes on 127.0.0.1: a control plane, a node in
eu-west and one in us-east exporting spans to a tiny OTLP receiver. eu-west is drained, so every
request sent to its node is forwarded (L7 spill) and the function runs, and logs, in us-east."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config.toml_fields import load_toml
from edge.node.tracecontext import parse_traceparent

from .cluster import Control, converge, follower, start_control
from .conftest import EXAMPLES, FIXTURES, REPO, NodeFactory, Proc, free_port
from .otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.toolchain

FUNCTION = "config-c"  # sdk/examples/c/config: logs one line per request
LOGGED = "answering with the configured greeting"
SERVER, CLIENT = 2, 3  # OTLP span kinds


@dataclass
class Stack:
    control: Control
    eu: Proc
    us: Proc
    receiver: OtlpReceiver


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    start_module_node: NodeFactory,
    built: Callable[[Path], Path],
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("observability")
    receiver = OtlpReceiver()
    control = start_control(tmp / "control", free_port(), tmp / "control.log")
    tracing = f'[tracing]\notlp_endpoint = "{receiver.url}"\n'
    try:
        with control.client() as client:
            client.set_region("eu-west", 53.35, -6.26, 100)
            client.set_region("us-east", 39.04, -77.49, 100)
            eu = follower(start_module_node, control, "eu-1", "eu-west", tmp / "eu", extra=tracing)
            us = follower(start_module_node, control, "us-1", "us-east", tmp / "us", extra=tracing)
            for project, route in [(EXAMPLES / "c" / "config", "*/"),
                                   (EXAMPLES / "c" / "echo", "*/echo"),
                                   (FIXTURES / "functions" / "trap", "*/trap")]:  # fmt: skip
                manifest = load_toml(project / "edge.toml")
                name = str(manifest["function"]["name"])
                v = client.upload_version(name, built(project).read_bytes(), manifest, "test")
                converge(client, client.deploy(name, int(v["number"]), [route]))
            converge(client, client.region("eu-west", "drain", 0.0))
            converge(client, {"revision": client.status()["revision"]})
        yield Stack(control, eu, us, receiver)
    finally:
        control.proc.stop()
        receiver.close()


def logged(
    control: Control, request_id: str, timeout_s: float = 15.0, function: str = FUNCTION
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with control.client() as client:
        while True:
            lines = client.logs(function)["lines"]
            found = [x for x in lines if x["request_id"] == request_id]
            if found or time.monotonic() > deadline:
                assert found, lines
                return found[0]
            time.sleep(0.1)


def test_a_trace_continues_across_a_spill_and_its_spans_reach_the_collector(
    stack: Stack,
) -> None:
    trace, caller = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    r = httpx.get(stack.eu.url + "/", headers={
        "traceparent": f"00-{trace}-{caller}-01", "x-request-id": "trace-check-1"})  # fmt: skip
    assert r.status_code == 200 and r.headers["x-edge-region"] == "us-east", r.text
    answer = parse_traceparent(r.headers["traceparent"])
    assert answer is not None and answer.trace_id == trace and answer.sampled

    spans = stack.receiver.trace(trace, 5)
    by = {(s.node, s.name): s for s in spans}
    assert set(by) == {("eu-1", "route"), ("eu-1", "forward"), ("us-1", "route"),
                       ("us-1", "instantiate"), ("us-1", "execute")}, spans  # fmt: skip
    eu_route, forward, us_route = by["eu-1", "route"], by["eu-1", "forward"], by["us-1", "route"]
    assert eu_route.parent_id == caller and eu_route.kind == SERVER
    assert answer.parent_id == eu_route.span_id  # the answer names the entry node's span
    assert forward.parent_id == eu_route.span_id and forward.kind == CLIENT
    assert forward.attributes["edge.spill.region"] == "us-east"
    # The forwarded request carried the trace with the forward span as its parent.
    assert us_route.parent_id == forward.span_id
    assert by["us-1", "instantiate"].parent_id == us_route.span_id
    assert by["us-1", "execute"].parent_id == us_route.span_id
    assert us_route.attributes["edge.function"] == f"default/{FUNCTION}"
    assert us_route.attributes["edge.version"] == "1"
    assert us_route.attributes["http.response.status_code"] == 200

    # The function's log line, collected by the control plane, carries the same ids.
    line = logged(stack.control, "trace-check-1")
    assert (line["message"], line["level"], line["source"]) == (LOGGED, "info", "log")
    assert (line["trace_id"], line["region"], line["node"], line["version"]) == (
        trace, "us-east", "us-1", "1")  # fmt: skip

    # Without a traceparent the entry node starts the trace, and it continues the same way.
    r2 = httpx.get(stack.eu.url + "/", headers={"traceparent": "00-garbage"})
    fresh = parse_traceparent(r2.headers["traceparent"])
    assert fresh is not None and fresh.trace_id != trace
    spans2 = stack.receiver.trace(fresh.trace_id, 5)
    assert {(s.node, s.name) for s in spans2} == set(by)
    assert next(s for s in spans2 if s.node == "eu-1" and s.name == "route").parent_id == ""

    # An unsampled caller's trace is propagated (same id back) but nothing is exported.
    quiet = "11111111111111111111111111111111"
    r3 = httpx.get(stack.eu.url + "/", headers={"traceparent": f"00-{quiet}-{caller}-00"})
    assert r3.headers["traceparent"].startswith(f"00-{quiet}-")
    logged(stack.control, r3.headers["x-request-id"])  # by then its spans would have come
    assert stack.receiver.trace(quiet, 1, timeout_s=1.0) == []


def test_the_forwarded_request_carries_the_trace_and_tracestate(stack: Stack) -> None:
    trace, caller = "5bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = httpx.get(stack.eu.url + "/echo", headers={
        "traceparent": f"00-{trace}-{caller}-01", "tracestate": "vendor=abc,other=1"})  # fmt: skip
    seen = dict(r.json()["headers"])  # what the function in us-east was given
    assert r.json()["region"] == "us-east"
    forward = next(s for s in stack.receiver.trace(trace, 5) if s.name == "forward")
    assert seen["traceparent"] == f"00-{trace}-{forward.span_id}-01"
    assert seen["tracestate"] == "vendor=abc,other=1"


def test_a_trap_is_in_the_functions_log_with_the_request_and_trace(stack: Stack) -> None:
    r = httpx.get(stack.eu.url + "/trap", headers={"x-request-id": "trap-check"})
    assert r.status_code == 500 and r.json()["error"] == "trap"
    line = logged(stack.control, "trap-check", function="trap")
    assert (line["source"], line["level"], line["node"]) == ("platform", "error", "us-1")
    assert line["message"].startswith("function trapped")
    assert line["trace_id"] == r.headers["traceparent"].split("-")[1]


def test_edge_logs_follow_gets_a_line_from_a_function_on_another_node_within_a_second(
    stack: Stack,
) -> None:
    warmup = httpx.get(stack.eu.url + "/", headers={"x-request-id": "follow-warmup"})
    assert warmup.status_code == 200
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "logs", FUNCTION, "--follow", "--json",
         "--control", stack.control.url, "--token", stack.control.tokens["admin"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    out: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            out.put(text)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for(request_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = json.loads(out.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no line for {request_id} in {timeout_s}s") from None
            if line["request_id"] == request_id:
                return dict(line)

    try:
        wait_for("follow-warmup", 60)  # the backlog: the stream is open from here on
        for i in range(3):
            started = time.monotonic()
            r = httpx.get(stack.eu.url + "/", headers={"x-request-id": f"follow-{i}"})
            assert r.headers["x-edge-region"] == "us-east"  # it ran on the other node
            line = wait_for(f"follow-{i}", 1.0)
            elapsed = time.monotonic() - started
            assert elapsed < 1.0, elapsed
            assert (line["message"], line["node"], line["region"]) == (LOGGED, "us-1", "us-east")
            assert line["trace_id"] == r.headers["traceparent"].split("-")[1]
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)  # it saw the end of the pipe
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    # The plain listing, filtered by region, in text.
    text = subprocess.run(
        [sys.executable, "-m", "edge", "logs", FUNCTION, "--region", "us-east", "--since", "10m",
         "--control", stack.control.url, "--token", stack.control.tokens["admin"]],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert f"us-east/us-1 default/{FUNCTION}" not in text.stdout  # the tenant's own name
    assert f"us-east/us-1 {FUNCTION}@v1 [follow-2] {LOGGED}" in text.stdout
    empty = subprocess.run(
        [sys.executable, "-m", "edge", "logs", FUNCTION, "--region", "eu-west",
         "--control", stack.control.url, "--token", stack.control.tokens["admin"]],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert empty.returncode == 0 and empty.stdout == ""  # eu-west forwarded everything
