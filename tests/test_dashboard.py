"""The dashboard end to end: a control plane and two follower nodes as processes on 127.0.0.1
and a function serving requests. Nodes report their traffic and GET /v1/traffic adds it up; in
headless Chromium (the system's, driven by Playwright) the page signs in, shows regions, nodes,
the function and its live traffic, and drains and undrains a region.

Outside CI a missing browser skips this test; in CI (`CI` set, as .ci/run does) it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.control.client import ControlClient

from .cluster import FUNCTION, Control, converge, follower, start_control, upload, variant
from .conftest import NodeFactory, Proc, free_port

pytestmark = pytest.mark.toolchain

CHROMIUM = "/usr/bin/chromium"
# The system browser as it is: no sandbox (root in CI), no GPU, nothing fetched in background.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
WAIT_MS = 15_000
# A value is the deployer's text: markup in it must show as itself and never run.
HTML_VALUE = '<img src=x onerror="document.title=\'ran\'">'
SECRET = "s3cr3t-the-dashboard-never-gets"


@contextmanager
def open_page(sync_api: Any, url: str) -> Iterator[tuple[Any, list[str]]]:
    """A page of the system's headless Chromium at `url`, and the script errors it raises."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            yield page, errors
        finally:
            browser.close()


def browser_or_skip() -> Any:
    """Playwright's sync API, or a skip outside CI / a loud failure in CI."""
    missing = ""
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        missing = f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        from playwright import sync_api
    except ImportError:
        missing = missing or "playwright is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the dashboard test needs a browser in CI: {missing}")
        pytest.skip(missing)
    return sync_api


class Traffic:
    """Requests to every node until stopped (bounded in count and time), so rates stay live."""

    def __init__(self, nodes: list[Proc]) -> None:
        self.nodes = nodes
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set() and time.monotonic() < deadline and self.sent < 20_000:
                for node in self.nodes:
                    http.get(node.url + "/")
                    self.sent += 1
                time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A node that stops reporting is stale after 8 s (not 60; nodes report every 5 s), so the
    page can forget one."""
    c = start_control(
        tmp_path / "control", free_port(), tmp_path / "control.log",
        ("--node-stale-after", "8", "--health-interval", "0.5"),
    )  # fmt: skip
    yield c
    c.proc.stop()


@pytest.fixture
def stack(control: Control, start_node: NodeFactory, tmp_path: Path) -> Iterator[list[Proc]]:
    client = control.client()
    client.set_region("eu-west", 53.35, -6.26, 100)
    client.set_region("us-east", 39.04, -77.49, 100)
    version = upload(client, tmp_path, "Hello from the dashboard test")
    client.deploy(FUNCTION, version, ["*/"])
    nodes = [
        follower(start_node, control, "eu-1", "eu-west", tmp_path / "eu-1"),
        follower(start_node, control, "us-1", "us-east", tmp_path / "us-1"),
    ]
    converge(client, client.deploy(FUNCTION, version, None))
    yield nodes
    client.close()


def region_state(control: Control, name: str) -> str:
    with control.client() as client:
        regions = client.regions()["regions"]
    return str(next(r["state"] for r in regions if r["name"] == name))


def test_nodes_report_live_traffic_per_function_and_region(
    control: Control, stack: list[Proc]
) -> None:
    eu, us = stack
    with httpx.Client(timeout=10) as http:
        for node, count in ((eu, 30), (us, 20)):
            for _ in range(count):
                assert http.get(node.url + "/").status_code == 200
    admin = httpx.Client(base_url=control.url, timeout=10,
                         headers={"authorization": f"Bearer {control.tokens['admin']}"})
    with admin:
        view: dict[str, Any] = {}
        deadline = time.monotonic() + 8  # nodes report every second; the window is 10 s
        while time.monotonic() < deadline:
            view = admin.get("/v1/traffic").json()
            if [f["requests"] for f in view["functions"]] == [50]:
                break
            time.sleep(0.2)
    [total] = view["functions"]
    assert (total["function"], total["requests"]) == (FUNCTION, 50), view
    assert total["requests_per_s"] > 0 and set(total["versions"]) == {"1"}
    assert 0 < total["p50_ms"] <= total["p99_ms"] < 10_000
    by_region = {r["region"]: r["requests"] for r in view["regions"]}
    assert by_region == {"eu-west": 30, "us-east": 20}


def test_dashboard_shows_the_stack_and_drains_a_region(
    control: Control, stack: list[Proc], start_node: NodeFactory, tmp_path: Path
) -> None:
    sync_api = browser_or_skip()
    expect = sync_api.expect
    # "/" redirects to /dashboard/.
    with open_page(sync_api, control.url + "/") as (page, errors), Traffic(stack) as traffic:
        # A wrong token is refused and the form comes back.
        page.fill("#token", "edge_not-a-token")
        page.click("#login button[type=submit]")
        expect(page.locator("#message")).to_have_text("the token was refused", timeout=WAIT_MS)
        expect(page.locator("#login")).to_be_visible()

        page.fill("#token", control.tokens["admin"])
        page.click("#login button[type=submit]")

        regions = page.locator("#regions tbody tr")
        eu = regions.filter(has_text="eu-west")
        expect(eu.locator("td").nth(1)).to_have_text("active", timeout=WAIT_MS)
        expect(regions.filter(has_text="us-east").locator("td").nth(4)).to_have_text(
            "healthy", timeout=WAIT_MS
        )

        nodes = page.locator("#nodes tbody tr")
        with control.client() as client:
            revision = client.status()["revision"]
        for node_id in ("eu-1", "us-1"):
            row = nodes.filter(has_text=node_id)
            expect(row.locator("td").nth(2)).to_have_text(str(revision), timeout=WAIT_MS)
            expect(row.locator("td").nth(4)).to_have_text("up", timeout=WAIT_MS)

        function = page.locator("#functions tbody tr").filter(has_text=FUNCTION)
        expect(function.locator("td").nth(1)).to_have_text("v1", timeout=WAIT_MS)
        expect(function.locator("td").nth(3)).to_contain_text("v1 stable")

        # Live traffic: the function over all regions, then each region, with a rate and p99.
        rows = page.locator("#traffic tbody tr")
        expect(rows.filter(has_text="eu-west")).to_be_visible(timeout=WAIT_MS)
        expect(rows.filter(has_text="us-east")).to_be_visible(timeout=WAIT_MS)
        total = rows.filter(has_text=FUNCTION).first.locator("td")
        assert float(total.nth(2).inner_text()) > 0
        assert float(total.nth(4).inner_text()) > 0  # p99 in ms
        assert traffic.sent > 0

        # Drain eu-west over the default ramp (5 min): draining, on the page and in the API.
        eu.get_by_role("button", name="Drain", exact=True).click()
        expect(eu.locator("td").nth(1)).to_have_text("draining", timeout=WAIT_MS)
        assert region_state(control, "eu-west") == "draining"
        expect(page.locator("#message")).to_contain_text("drain eu-west: draining")

        # Undrain at once.
        page.select_option("#ramp", "0")
        eu.get_by_role("button", name="Undrain", exact=True).click()
        expect(eu.locator("td").nth(1)).to_have_text("active", timeout=WAIT_MS)
        assert region_state(control, "eu-west") == "active"

        # A node that is gone for good: once it is stale, its row offers Forget, which
        # removes it from the page and from the control plane's status.
        spare = follower(start_node, control, "spare-1", "us-east", tmp_path / "spare-1")
        spare_row = nodes.filter(has_text="spare-1")
        expect(spare_row.locator("td").nth(4)).to_have_text("up", timeout=WAIT_MS)
        expect(spare_row.get_by_role("button", name="Forget")).to_have_count(0)
        spare.stop()
        forget = spare_row.get_by_role("button", name="Forget", exact=True)
        expect(forget).to_be_visible(timeout=2 * WAIT_MS)
        forget.click()
        expect(page.locator("#message")).to_contain_text("forget node spare-1: done")
        expect(spare_row).to_have_count(0, timeout=WAIT_MS)
        with control.client() as client:
            assert "spare-1" not in {n["id"] for n in client.status()["nodes"]}

        # Signing out forgets the token: a reload asks for it again.
        page.click("#logout")
        page.reload()
        expect(page.locator("#login")).to_be_visible()
        assert errors == []


def test_dashboard_deletes_a_function_once_its_name_is_typed(
    control: Control, tmp_path: Path
) -> None:
    """The functions list (GET /v1/functions) shows the canary and only this tenant's
    functions. Delete asks for the function's name; a read-only token's 403 is shown, not
    swallowed; with a deploy token the function leaves the list and the control plane's
    status, and its versions stay; "deleted ones too" shows it again, marked deleted."""
    sync_api = browser_or_skip()
    expect = sync_api.expect
    with control.client() as client:
        version = upload(client, tmp_path, "Hello, soon deleted")
        client.deploy(FUNCTION, version, ["*/"])
        canary = upload(client, tmp_path, "Hello, canary")
        client.canary(FUNCTION, canary, 10)
        reader = client.create_token("default", ["read"], "dashboard reader")["token"]
        client.create_tenant("other")
        theirs = client.create_token("other", ["deploy"], "other tenant")["token"]
    with ControlClient(control.url, theirs) as other:  # a function of the same name
        upload(other, tmp_path, "Hello, other tenant")
    with open_page(sync_api, control.url + "/dashboard/") as (page, errors):
        dialog, confirm = page.locator("#delete-dialog"), page.locator("#delete-confirm")
        ok = dialog.get_by_role("button", name="Delete", exact=True)
        row = page.locator("#functions tbody tr").filter(has_text=FUNCTION)

        def sign_in(token: str) -> None:
            page.fill("#token", token)
            page.click("#login button[type=submit]")
            expect(row.locator("td").nth(1)).to_have_text(f"v{version}", timeout=WAIT_MS)

        # A read-only token may look: the canary, the versions, no other tenant's function.
        sign_in(reader)
        cells = row.locator("td")
        expect(cells.nth(2)).to_have_text(f"v{canary} at 10% (ip)")
        expect(cells.nth(3)).to_have_text(f"v{version} stable v{canary} canary")
        expect(cells.nth(4)).to_have_text("*/")
        expect(cells.nth(6)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$"))
        expect(page.locator("#functions tbody tr")).to_have_count(1)  # not theirs
        # It may press the button, and sees the API's refusal.
        expect(dialog).to_be_hidden()
        row.get_by_role("button", name="Delete", exact=True).click()
        expect(dialog).to_be_visible()
        expect(page.locator("#delete-name")).to_have_text(FUNCTION)
        expect(ok).to_be_disabled()
        confirm.fill(FUNCTION)
        ok.click()
        expect(dialog).to_be_hidden()
        message = page.locator("#message")
        expect(message).to_have_text(
            f"delete {FUNCTION}: this token lacks the 'deploy' scope", timeout=WAIT_MS
        )
        expect(message).to_have_class("error")
        expect(row).to_have_count(1)
        page.click("#logout")

        # A wrong or partial name keeps the button disabled; Cancel changes nothing.
        sign_in(control.tokens["admin"])
        row.get_by_role("button", name="Delete", exact=True).click()
        expect(confirm).to_have_value("")  # not the name typed for the last function
        confirm.fill(FUNCTION[:-1])
        expect(ok).to_be_disabled()
        confirm.press("Enter")  # submitting anyway deletes nothing
        expect(dialog).to_be_visible()
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        with control.client() as client:
            assert [f["function"] for f in client.status()["functions"]] == [
                f"default/{FUNCTION}"]

        # The right name deletes it: gone from the page after the refresh, and from status.
        row.get_by_role("button", name="Delete", exact=True).click()
        confirm.fill(FUNCTION)
        ok.click()
        expect(message).to_contain_text(f"delete {FUNCTION}: done, revision ",
                                        timeout=WAIT_MS)
        expect(row).to_have_count(0, timeout=WAIT_MS)
        with control.client() as client:
            status = client.status()
            assert status["functions"] == []
            numbers = [v["number"] for v in client.versions(FUNCTION)["versions"]]
        expect(message).to_have_text(f"delete {FUNCTION}: done, revision "
                                     f"{status['revision']}")
        expect(page.locator("#functions tbody td.empty")).to_have_text("no functions yet")
        assert numbers == [version, canary]
        # Asked for, it is back in the list: deleted, with nothing left to press.
        page.check("#show-deleted")
        expect(row.locator("td").nth(1)).to_have_text("deleted", timeout=WAIT_MS)
        expect(row.locator("td").nth(4)).to_have_text("")
        for name in ("Promote", "Roll back", "Delete"):
            expect(row.get_by_role("button", name=name, exact=True)).to_be_disabled()
        page.uncheck("#show-deleted")
        expect(row).to_have_count(0, timeout=WAIT_MS)
        assert errors == []


def test_dashboard_shows_config_values_as_text_and_never_a_secret(
    control: Control, tmp_path: Path
) -> None:
    """A function's Config shows what config.get reads: its deploy-time values over the
    stable version's edge.toml [config], each with where it comes from. A secret shows by
    name only and its value is nowhere in the page; a value that looks like markup is text.
    Set and Remove (non-secret values) call PUT .../config; a read-only token's 403 shows."""
    sync_api = browser_or_skip()
    expect = sync_api.expect
    with control.client() as client:
        data, manifest = variant(tmp_path, "Hello, configured")
        manifest["config"] = {"greeting": "hi from edge.toml", "mode": "toml"}
        version = int(client.upload_version(FUNCTION, data, manifest, "configured")["number"])
        client.deploy(FUNCTION, version, ["*/"])
        client.set_config(FUNCTION, {"mode": "deploy-time", "banner": HTML_VALUE})
        client.set_config(FUNCTION, {"api_key": SECRET}, ["api_key"])
        reader = client.create_token("default", ["read"], "config reader")["token"]
    with open_page(sync_api, control.url + "/dashboard/") as (page, errors):
        message, section = page.locator("#message"), page.locator("#config-section")
        rows = page.locator("#config tbody tr")
        set_button = page.locator("#config-form button[type=submit]")

        def sign_in(token: str) -> None:
            page.fill("#token", token)
            page.click("#login button[type=submit]")
            function = page.locator("#functions tbody tr").filter(has_text=FUNCTION)
            function.get_by_role("button", name="Config", exact=True).click(timeout=WAIT_MS)
            expect(page.locator("#config-name")).to_have_text(FUNCTION)

        def row(key: str) -> Any:
            return rows.filter(has=page.locator("td:first-child", has_text=key))

        sign_in(reader)
        expect(rows).to_have_count(4, timeout=WAIT_MS)
        for i, cells in enumerate((
            ["api_key", "(secret)", "edge config", ""],
            ["banner", HTML_VALUE, "edge config", "Remove"],
            ["greeting", "hi from edge.toml", f"edge.toml v{version}", ""],
            ["mode", "deploy-time", f"edge config (over edge.toml v{version})", "Remove"],
        )):  # fmt: skip
            expect(rows.nth(i).locator("td")).to_have_text(cells)
        expect(row("api_key").locator("td").nth(1)).to_have_class("secret")
        # The markup is text: no element made of it, nothing ran, escaped in the HTML.
        banner = row("banner").locator("td").nth(1)
        assert banner.text_content() == HTML_VALUE
        assert "&lt;img src=x" in banner.inner_html()
        expect(page.locator("#config img")).to_have_count(0)
        assert page.title() == "edge · dashboard"
        assert SECRET not in page.content()
        # A read-only token may look, and sees the API refuse a change.
        page.fill("#config-key", "greeting")
        page.fill("#config-value", "not allowed")
        set_button.click()
        expect(message).to_have_text(
            f"set greeting of {FUNCTION}: this token lacks the 'deploy' scope",
            timeout=WAIT_MS,
        )
        expect(message).to_have_class("error")
        page.click("#logout")
        expect(section).to_be_hidden()

        sign_in(control.tokens["admin"])
        expect(rows).to_have_count(4, timeout=WAIT_MS)
        # A secret is not turned into a shown value from here (its value would be lost).
        page.fill("#config-key", "api_key")
        page.fill("#config-value", "oops")
        set_button.click()
        expect(message).to_have_text(
            f"api_key of {FUNCTION} is a secret: change it with edge config set --secret"
        )
        # A bad key: the API's 400, said on the page.
        page.fill("#config-key", "bad key")
        set_button.click()
        expect(message).to_contain_text(f"set bad key of {FUNCTION}: bad config key",
                                        timeout=WAIT_MS)
        # Set one over edge.toml, remove another: edge.toml's value is read again.
        page.fill("#config-key", "greeting")
        page.fill("#config-value", "hi from the dashboard")
        set_button.click()
        expect(message).to_contain_text(f"set greeting of {FUNCTION}: done, revision ",
                                        timeout=WAIT_MS)
        expect(row("greeting").locator("td")).to_have_text(
            ["greeting", "hi from the dashboard",
             f"edge config (over edge.toml v{version})", "Remove"], timeout=WAIT_MS)
        expect(page.locator("#config-key")).to_have_value("")
        row("mode").get_by_role("button", name="Remove", exact=True).click()
        expect(message).to_contain_text(f"unset mode of {FUNCTION}: done, revision ",
                                        timeout=WAIT_MS)
        expect(row("mode").locator("td")).to_have_text(
            ["mode", "toml", f"edge.toml v{version}", ""], timeout=WAIT_MS)
        with control.client() as client:
            values = {v["key"]: (v["value"], v["secret"])
                      for v in client.config(FUNCTION)["values"]}
        assert values == {"api_key": (None, True), "banner": (HTML_VALUE, False),
                          "greeting": ("hi from the dashboard", False)}
        assert SECRET not in page.content()
        page.click("#config-close")
        expect(section).to_be_hidden()
        assert errors == []
