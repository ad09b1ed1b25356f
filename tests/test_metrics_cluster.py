"""Metrics across a control plane and follower nodes (real processes): a push is timed once per
node, nodes show their state, and a node's series follow the versions it serves."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from edge.control.client import wait_for_nodes

from .cluster import FUNCTION, Control, converge, follower, upload
from .conftest import NodeFactory
from .metrics_text import Scrape, delta

pytestmark = pytest.mark.toolchain

KEY = f"default/{FUNCTION}"  # the node names a control-plane function tenant/name


def test_a_push_is_timed_once_per_node_and_node_series_follow_versions(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    nodes = [
        follower(start_node, control, f"m{i}", region, tmp_path / f"state{i}")
        for i, region in enumerate(["eu-west", "us-east"])
    ]
    with control.client() as client:
        v1 = upload(client, tmp_path, "version one")
        v2 = upload(client, tmp_path, "version two")
        # Nodes joining are revisions too: let both apply those before counting. A report is
        # counted before it is stored, so what status shows is in the metrics already.
        assert wait_for_nodes(client.status, client.status()["revision"], 60).converged
        before = Scrape.of(control.url)
        count = "edge_control_convergence_seconds_count"
        first = client.deploy(FUNCTION, v1, ["*/"])
        converge(client, first)
        after = Scrape.of(control.url)
        assert delta(before, after, count) == 2  # one push, two nodes
        assert 0 < delta(before, after, "edge_control_convergence_seconds_sum") < 2 * 60
        assert after.value("edge_control_revision") == first["revision"]
        assert after.value("edge_control_nodes", state="current") == 2
        assert after.value("edge_control_nodes", region="us-east", state="current") == 1
        assert after.value("edge_control_nodes", state="behind") == 0
        deploys = {"route": "/v1/functions/{name}/deploy", "method": "POST", "status": "200"}
        assert delta(before, after, "edge_control_api_requests_total", **deploys) == 1

        for _ in range(3):
            assert httpx.get(nodes[0].url + "/").text == "version one\n"
        one = Scrape.of(nodes[0].url)
        assert one.value("edge_function_requests_total", function=KEY, version="1") == 3
        assert one.value("edge_node_applied_revision") == first["revision"]
        assert one.value("edge_node_info", node="m0", region="eu-west") == 1

        second = client.deploy(FUNCTION, v2, None)
        converge(client, second)
        for _ in range(2):
            assert httpx.get(nodes[0].url + "/").text == "version two\n"
        two = Scrape.of(nodes[0].url)
    # Version 1 is no longer served: its series are gone, so versions do not pile up.
    assert not [ls for _, ls in two.series() if ("version", "1") in ls]
    assert two.value("edge_function_requests_total", function=KEY, version="2") == 2
    assert two.value("edge_function_instantiate_seconds_count", function=KEY, version="2") == 2
    assert two.value("edge_node_applied_revision") == second["revision"]
    assert delta(after, Scrape.of(control.url), count) == 2
