"""The control plane's HTTP client, as the CLI uses it. Error answers become `RemoteError` with
the server's status, reason and message; a dead connection becomes `ControlUnreachable`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from edge.control.errors import ControlUnreachable, NotFound, RemoteError
from edge.control.status import refused_revision
from edge.control.wire import METADATA_HEADER, encode_metadata

DEFAULT_URL = "http://127.0.0.1:7000"


class ControlClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ControlUnreachable(f"control plane at {self.url}: {e}") from None
        _raise_for_status(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self._call(method, path, **kwargs).json()
        assert isinstance(body, dict)
        return body

    def upload_version(
        self, name: str, component: bytes, manifest: dict[str, Any], message: str
    ) -> dict[str, Any]:
        return self._json(
            "POST",
            f"/v1/functions/{name}/versions",
            content=component,
            headers={"content-type": "application/wasm",
                     METADATA_HEADER: encode_metadata(manifest, message)},
        )

    def functions(self, deleted: bool = False) -> dict[str, Any]:
        """{"functions": [...]}: this tenant's, with deleted ones too if `deleted`."""
        return self._json("GET", "/v1/functions", params={"deleted": "1"} if deleted else {})

    def versions(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/functions/{name}/versions")

    def deploy(
        self, name: str, version: int, routes: list[str] | None,
        values: dict[str, str | None] | None = None,
    ) -> dict[str, Any]:
        """`values`: config values changed with the deploy (nodes get both at once)."""
        body: dict[str, Any] = {"version": version}
        if routes is not None:
            body["routes"] = routes
        if values:
            body["config"] = {"values": values}
        return self._json("POST", f"/v1/functions/{name}/deploy", json=body)

    def canary(
        self, name: str, version: int | None, percent: int, sticky: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"version": version, "percent": percent}
        if sticky is not None:
            body["sticky"] = sticky
        return self._json("POST", f"/v1/functions/{name}/canary", json=body)

    def delete_function(self, name: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/functions/{name}")

    def config(self, name: str) -> dict[str, Any]:
        """The function's deploy-time config values (secrets by name only)."""
        return self._json("GET", f"/v1/functions/{name}/config")

    def set_config(
        self, name: str, values: dict[str, str | None], secret: list[str] | None = None
    ) -> dict[str, Any]:
        """Sets (str) or removes (None) values in one revision; `secret`: keys set here whose
        values are never shown again."""
        return self._json("PUT", f"/v1/functions/{name}/config",
                          json={"values": values, "secret": secret or []})

    def promote(self, name: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/functions/{name}/promote", json={})

    def rollback(self, name: str, to: int | None) -> dict[str, Any]:
        return self._json("POST", f"/v1/functions/{name}/rollback", json={"to": to})

    def status(self, revision: int | None = None, wait_s: float = 0.0) -> dict[str, Any]:
        """With `revision`: the server answers once every live node has applied it (woken by
        the report that completes it), or after `wait_s` seconds."""
        params = {} if revision is None else {"revision": revision, "wait_s": wait_s}
        return self._json("GET", "/v1/status", params=params)

    def wait_for(
        self,
        revision: int,
        timeout_s: float,
        on_progress: Callable[[Convergence], None] = lambda _: None,
    ) -> Convergence:
        """Until every live node has applied `revision`, every one behind has refused it, or
        `timeout_s`, long-polling status: it returns the moment the last node reports, and
        shows progress about once a second."""
        deadline = time.monotonic() + timeout_s
        return wait_for_nodes(
            lambda: self.status(revision, max(0.0, min(1.0, deadline - time.monotonic()))),
            revision, timeout_s, on_progress=on_progress, interval_s=0.0,
        )  # fmt: skip

    def create_tenant(self, name: str) -> dict[str, Any]:
        return self._json("POST", "/v1/tenants", json={"name": name})

    def tenants(self) -> dict[str, Any]:
        return self._json("GET", "/v1/tenants")

    def create_token(
        self, tenant: str | None, scopes: list[str], name: str = "", node: bool = False,
        expires_in_s: float | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = (
            {"kind": "node"} if node else {"kind": "api", "tenant": tenant, "scopes": scopes}
        )
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        if name:
            body["name"] = name
        return self._json("POST", "/v1/tokens", json=body)

    def rotate_secrets_key(self, new_key_file: str) -> dict[str, Any]:
        """Re-seals every secret under the key in `new_key_file` (a path on the control plane's
        machine, made if absent) with the control plane running (admin scope)."""
        return self._json("POST", "/v1/secrets-key/rotate", json={"new_key_file": new_key_file})

    def tokens(self, tenant: str | None = None) -> dict[str, Any]:
        return self._json("GET", "/v1/tokens", params={"tenant": tenant} if tenant else {})

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        return self._json("POST", f"/v1/tokens/{token_id}/revoke")

    def logs(
        self, name: str, *, since: str | None = None, region: str | None = None,
        after: int = 0, limit: int | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """{"lines": [...], "next": seq}; `since` is a duration such as "10m"."""
        return self._json("GET", f"/v1/functions/{name}/logs",
                          params=_log_params(since, region, after, limit))  # fmt: skip

    def follow_logs(
        self, name: str, *, since: str | None = None, region: str | None = None, after: int = 0
    ) -> Iterator[dict[str, Any]]:
        """Lines as they arrive, until the caller stops iterating or the connection ends."""
        params = {**_log_params(since, region, after, None), "follow": "1"}
        try:
            with self._http.stream("GET", f"/v1/functions/{name}/logs", params=params) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for_status(r)
                for text in r.iter_lines():
                    if text.strip():  # empty lines are the server's heartbeat
                        yield json.loads(text)
        except httpx.HTTPError as e:
            raise ControlUnreachable(f"control plane at {self.url}: {e}") from None

    def forget_node(self, node_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/nodes/{quote(node_id, safe='')}")

    def regions(self) -> dict[str, Any]:
        return self._json("GET", "/v1/regions")

    def region(self, name: str, action: str, over_s: float | None) -> dict[str, Any]:
        body = {} if over_s is None else {"over_s": over_s}
        return self._json("POST", f"/v1/regions/{name}/{action}", json=body)

    def set_region(
        self, name: str, latitude: float, longitude: float, weight: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
        if weight is not None:
            body["weight"] = weight
        return self._json("PUT", f"/v1/regions/{name}", json=body)


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        reason, message = str(body["error"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        reason, message = "http_error", response.text[:200] or response.reason_phrase
    raise RemoteError(response.status_code, reason, message)


def describe_failure(e: httpx.HTTPError) -> str:
    """One line for a server's log about a failed call to the control plane: its own answer
    when it gave one ("401 unauthorized: unknown token"), else what the connection did."""
    if isinstance(e, httpx.HTTPStatusError):
        try:
            _raise_for_status(e.response)
        except RemoteError as remote:
            said = f" {remote.reason}: {remote.message}" if remote.message else ""
            return f"it answered {remote.status}{said}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _log_params(
    since: str | None, region: str | None, after: int, limit: int | None
) -> dict[str, str]:
    params = {"after": str(after)}
    if since:
        params["since"] = since
    if region:
        params["region"] = region
    if limit is not None:
        params["limit"] = str(limit)
    return params


@dataclass(frozen=True)
class Convergence:
    revision: int
    converged: bool
    current: tuple[str, ...]  # node ids at or past the revision
    laggards: tuple[str, ...]  # live nodes not there yet
    stale: tuple[str, ...]  # nodes that stopped reporting; not waited for
    elapsed_s: float
    # Behind, and down by the control plane's own /healthz check: dead, most likely, but not
    # stale yet (that takes a minute); not waited for either.
    down: tuple[str, ...] = ()
    # Laggards that reported refusing this revision or a later one (wrong key, tampered
    # snapshot or blob): they keep their last good state and will not apply it by waiting.
    refused: tuple[str, ...] = ()

    @property
    def stuck(self) -> bool:
        """Not converged, and every laggard has refused: waiting longer cannot help."""
        return bool(self.laggards) and set(self.laggards) <= set(self.refused)


def convergence(status: dict[str, Any], revision: int, elapsed_s: float) -> Convergence:
    nodes = status.get("nodes", [])
    stale = tuple(n["id"] for n in nodes if n["stale"])
    live = [n for n in nodes if not n["stale"]]
    current = tuple(n["id"] for n in live if n["applied_revision"] >= revision)
    behind = [n for n in live if n["applied_revision"] < revision]
    down = tuple(n["id"] for n in behind if n.get("check") == "down")
    waited = [n for n in behind if n.get("check") != "down"]
    laggards = tuple(n["id"] for n in waited)
    # A refusal of an older revision says nothing about this one: the node may still apply it.
    refused = tuple(
        n["id"] for n in waited
        if (r := refused_revision(n.get("last_error", ""))) is not None and r >= revision
    )
    return Convergence(revision, not laggards, current, laggards, stale, elapsed_s, down,
                       refused)


def wait_for_nodes(
    fetch_status: Callable[[], dict[str, Any]],
    revision: int,
    timeout_s: float,
    *,
    on_progress: Callable[[Convergence], None] = lambda _: None,
    interval_s: float = 0.25,
    now: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Convergence:
    """Polls status until every live node has applied `revision`, every node still behind
    has refused it (`Convergence.stuck`), or `timeout_s` passes."""
    start = now()
    while True:
        state = convergence(fetch_status(), revision, now() - start)
        on_progress(state)
        if state.converged or state.stuck or state.elapsed_s >= timeout_s:
            return state
        sleep(interval_s)


# A region's state while its ramp runs, and once it is over, per operator action.
RAMPING = {"drain": "draining", "undrain": "undraining"}


def ramp_progress(region: dict[str, Any]) -> float:
    """How far a GET /v1/regions entry's drain or undrain ramp has got, 0..1 (1: no ramp)."""
    d = region.get("drain")
    if not d:
        return 1.0
    target = 0.0 if d["direction"] == "drain" else 1.0
    span = target - float(d["from_share"])
    if span == 0:
        return 1.0
    return min(1.0, max(0.0, (float(region["share"]) - float(d["from_share"])) / span))


def ramp_left_s(region: dict[str, Any], now_unix: float) -> float:
    d = region.get("drain")
    if not d:
        return 0.0
    return max(0.0, float(d["started_unix"]) + float(d["over_s"]) - now_unix)


def wait_for_region(
    fetch_regions: Callable[[], dict[str, Any]],
    name: str,
    action: str,
    *,
    on_progress: Callable[[dict[str, Any], float], None] = lambda _r, _left: None,
    interval_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Polls GET /v1/regions until region `name` is no longer ramping the way `action` started
    it; returns its last entry. That is the end of the ramp, or an earlier stop when another
    change (an undrain during a drain) took over. `on_progress` gets the entry and the seconds
    the ramp has left."""
    while True:
        listing = fetch_regions()
        region = next((r for r in listing["regions"] if r["name"] == name), None)
        if region is None:
            raise NotFound(f"no region {name!r}")
        left_s = ramp_left_s(region, float(listing["now_unix"]))
        on_progress(region, left_s)
        if region["state"] != RAMPING[action]:
            return dict(region)
        # Wake at the ramp's end rather than up to an interval after it.
        sleep(max(0.05, min(interval_s, left_s + 0.01)))
