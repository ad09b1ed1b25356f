"""The control plane's HTTP client, as the CLI uses it. Error answers become `RemoteError` with
the server's status, reason and message; a dead connection becomes `ControlUnreachable`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from edge.control.errors import ControlUnreachable, RemoteError
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
        if response.status_code >= 400:
            try:
                body = response.json()
                reason, message = str(body["error"]), str(body["message"])
            except (ValueError, KeyError, TypeError):
                reason, message = "http_error", response.text[:200] or response.reason_phrase
            raise RemoteError(response.status_code, reason, message)
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

    def versions(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/functions/{name}/versions")

    def deploy(self, name: str, version: int, routes: list[str] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"version": version}
        if routes is not None:
            body["routes"] = routes
        return self._json("POST", f"/v1/functions/{name}/deploy", json=body)

    def canary(
        self, name: str, version: int | None, percent: int, sticky: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"version": version, "percent": percent}
        if sticky is not None:
            body["sticky"] = sticky
        return self._json("POST", f"/v1/functions/{name}/canary", json=body)

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
        """Until every live node has applied `revision` (or `timeout_s`), long-polling status:
        it returns the moment the last node reports, and shows progress about once a second."""
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
        self, tenant: str | None, scopes: list[str], name: str = "", node: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = (
            {"kind": "node"} if node else {"kind": "api", "tenant": tenant, "scopes": scopes}
        )
        if name:
            body["name"] = name
        return self._json("POST", "/v1/tokens", json=body)

    def tokens(self, tenant: str | None = None) -> dict[str, Any]:
        return self._json("GET", "/v1/tokens", params={"tenant": tenant} if tenant else {})

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        return self._json("POST", f"/v1/tokens/{token_id}/revoke")

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


@dataclass(frozen=True)
class Convergence:
    revision: int
    converged: bool
    current: tuple[str, ...]  # node ids at or past the revision
    laggards: tuple[str, ...]  # live nodes not there yet
    stale: tuple[str, ...]  # nodes that stopped reporting; not waited for
    elapsed_s: float


def convergence(status: dict[str, Any], revision: int, elapsed_s: float) -> Convergence:
    nodes = status.get("nodes", [])
    stale = tuple(n["id"] for n in nodes if n["stale"])
    live = [n for n in nodes if not n["stale"]]
    current = tuple(n["id"] for n in live if n["applied_revision"] >= revision)
    laggards = tuple(n["id"] for n in live if n["applied_revision"] < revision)
    return Convergence(revision, not laggards, current, laggards, stale, elapsed_s)


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
    """Polls status until every live node has applied `revision`, or `timeout_s` passes."""
    start = now()
    while True:
        state = convergence(fetch_status(), revision, now() - start)
        on_progress(state)
        if state.converged or state.elapsed_s >= timeout_s:
            return state
        sleep(interval_s)
