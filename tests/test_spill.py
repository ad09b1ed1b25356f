"""Draining a region under steady load: its node forwards new requests to the next region."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from edge.node.spill import RegionsView, spill_target, view_from

from .cluster import FUNCTION, Control, converge, follower, upload
from .conftest import NodeFactory


def test_view_and_split_are_pure_and_sticky() -> None:
    regions = [
        {"name": "eu-west", "share": 0.25, "node_urls": ["http://a:1"]},
        {"name": "us-east", "share": 1.0, "node_urls": ["http://b:1", "http://c:1"]},
        {"name": "ap-south", "share": 0.5, "node_urls": ["http://d:1"]},  # draining: no target
    ]
    view = view_from(regions, "eu-west", "http://a:1")
    assert view.own_share == 0.25 and view.targets == (("us-east", ("http://b:1", "http://c:1")),)
    keys = [f"ip=10.0.{i // 256}.{i % 256}" for i in range(2000)]
    kept = [k for k in keys if spill_target(view, k, False) is None]
    assert 0.2 < len(kept) / len(keys) < 0.3
    assert all(spill_target(view, k, False) == spill_target(view, k, False) for k in keys[:50])
    assert spill_target(view, keys[0], already_spilled=True) is None
    assert spill_target(RegionsView(), keys[0], False) is None


def test_drain_under_load_spills_without_a_failed_request(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    eu = follower(start_node, control, "eu-1", "eu-west", tmp_path / "eu")
    us = follower(start_node, control, "us-1", "us-east", tmp_path / "us")
    with control.client() as client:
        converge(client, client.deploy(FUNCTION, upload(client, tmp_path, "hello"), ["*/"]))
        deadline = time.monotonic() + 20
        while not all(r["node_urls"] for r in client.regions()["regions"]):
            assert time.monotonic() < deadline, client.regions()
            time.sleep(0.2)
        seen: list[tuple[float, int, str]] = []

        def hit(n: int) -> None:
            for i in range(n):
                r = http.get(eu.url + "/", headers={"x-forwarded-for": f"81.2.69.{i % 200}"})
                seen.append((time.monotonic(), r.status_code, r.headers.get("x-edge-region", "")))

        with httpx.Client(timeout=10) as http:
            hit(50)
            client.region("eu-west", "drain", 2.0)
            drain_started = time.monotonic()
            while time.monotonic() - drain_started < 4.5:  # the ramp, plus a poll interval
                hit(20)
            drained = time.monotonic()
            hit(100)
            client.region("eu-west", "undrain", 0.0)
            time.sleep(2.5)
            back = time.monotonic()
            hit(50)
    assert seen and all(status == 200 for _, status, _ in seen), [s for s in seen if s[1] != 200]
    assert {region for t, _, region in seen if t < drain_started} == {"eu-west"}
    assert {region for t, _, region in seen if drained <= t < back - 2.5} == {"us-east"}
    assert {region for t, _, region in seen if t >= back} == {"eu-west"}
    assert httpx.get(us.url + "/").headers["x-edge-region"] == "us-east"
