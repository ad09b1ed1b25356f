"""Following a control plane: long-poll signed snapshots, fetch and verify blobs, compile, switch.

The node connects out (so it may sit behind NAT) and asks for anything newer than the revision
it applied. A new snapshot is verified (signature, then every version's signature and every
blob's sha256), every version is compiled, and only then is the routing table switched, in one
assignment, so no request sees half a revision and none pays compilation. Anything refused
leaves the last good state serving and is reported. The applied snapshot and blobs are kept on
disk, so a restarted node serves them before the control plane answers, if it ever does.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx

from edge.control.errors import SnapshotRejected
from edge.control.snapshot import SignedVersion, Snapshot, open_snapshot, verify_blob
from edge.errors import EdgeError
from edge.node.persisted import NodeState
from edge.node.runtime import Loaded, NodeRuntime, Served, Unavailable
from edge.node.spill import Topology
from edge.sandbox.function import LoadedFunction

LONG_POLL_S = 25.0
HEARTBEAT_S = 5.0
TRAFFIC_S = 1.0  # traffic counters, for the dashboard's live view; only when they moved
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ControlSettings:
    url: str
    token: str
    public_key: bytes


class Follower:
    def __init__(
        self,
        runtime: NodeRuntime,
        settings: ControlSettings,
        state: NodeState,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.state = state
        self.say = say or (lambda m: print(f"edge node: {m}", file=sys.stderr, flush=True))
        self.applied: int = -1
        self.last_error = ""
        self.convergence_ms: float | None = None
        # Compiled versions by (function, number, sha256): unchanged versions are not reloaded.
        self._loaded: dict[tuple[str, int, str], Loaded] = {}
        self._report_lock = asyncio.Lock()
        self._traffic_sent = 0  # the tally's observation count the control plane last received
        self._client = httpx.AsyncClient(
            base_url=settings.url,
            headers={"authorization": f"Bearer {settings.token}"},
            timeout=httpx.Timeout(10.0, read=LONG_POLL_S + 10),
            trust_env=False,
        )

    # --- applying ---------------------------------------------------------------------------

    def _load_version(self, v: SignedVersion, data: bytes) -> Loaded:
        key = (v.function, v.number, v.sha256)
        if key not in self._loaded:
            try:
                self._loaded[key] = LoadedFunction(
                    self.runtime.engine, self.runtime.cache, data, v.config, self.runtime.sink
                )
            except EdgeError as e:
                self._loaded[key] = Unavailable(e)
        return self._loaded[key]

    async def _blob(self, v: SignedVersion) -> bytes:
        data = self.state.blob(v.sha256)
        if data is None:
            r = await self._client.get(f"/v1/blobs/{v.sha256}")
            r.raise_for_status()
            data = r.content
        verify_blob(v, data)  # raises BlobMismatch: a tampered blob is never stored or run
        self.state.save_blob(v.sha256, data)
        return data

    async def apply(self, envelope: bytes, *, fetch: bool = True) -> Snapshot:
        snapshot = open_snapshot(envelope, self.settings.public_key)
        versions = [
            v for d in snapshot.functions.values() for v in (d.stable, d.canary) if v is not None
        ]
        blobs: dict[str, bytes] = {}
        for v in versions:
            if fetch:
                blobs[v.sha256] = await self._blob(v)
            else:
                local = self.state.blob(v.sha256)
                if local is None:
                    raise SnapshotRejected(f"{v.function} v{v.number}: blob missing on disk")
                verify_blob(v, local)
                blobs[v.sha256] = local

        def compile_all() -> dict[str, Served]:
            served = {}
            for name, d in snapshot.functions.items():
                stable = self._load_version(d.stable, blobs[d.stable.sha256])
                canary = self._load_version(d.canary, blobs[d.canary.sha256]) if d.canary else None
                served[name] = Served(
                    stable,
                    canary,
                    d.canary_percent,
                    d.sticky,
                    str(d.stable.number),
                    str(d.canary.number) if d.canary else "",
                )
            return served

        served = await anyio.to_thread.run_sync(compile_all)
        self.runtime.deploy(
            snapshot.routes, served, revision=snapshot.revision,
            topology=Topology(snapshot.regions, snapshot.nodes),
        )  # fmt: skip
        live = {(v.function, v.number, v.sha256) for v in versions}
        self._loaded = {k: f for k, f in self._loaded.items() if k in live}
        self.state.save_snapshot(envelope)
        self.applied = snapshot.revision
        self.last_error = ""
        return snapshot

    async def restore(self) -> bool:
        """Serves the snapshot kept on disk, if there is a good one, before any network."""
        envelope = self.state.load_snapshot()
        if envelope is None:
            return False
        try:
            snapshot = await self.apply(envelope, fetch=False)
        except SnapshotRejected as e:
            self.say(f"kept snapshot on disk refused: {e.message}")
            return False
        self.say(f"serving revision {snapshot.revision} from disk")
        return True

    # --- the loop ---------------------------------------------------------------------------

    async def report(self) -> None:
        # One report at a time, each built when it is its turn: a heartbeat still in flight with
        # the old revision must not land after the apply report and move status backwards.
        async with self._report_lock:
            await self._report()

    async def _report(self) -> None:
        body = {
            "node_id": self.runtime.config.node_id,
            "region": self.runtime.config.region,
            "revision": max(self.applied, 0),
            "healthy": True,
            "last_error": self.last_error[:2000],
            "url": self.own_url,
            "requests_total": self.runtime.metrics.requests_total(),
        }
        if self.convergence_ms is not None:
            body["convergence_ms"] = self.convergence_ms
        with contextlib.suppress(httpx.HTTPError):  # the next heartbeat tries again
            await self._client.post("/v1/node/report", json=body)

    async def poll_once(self) -> bool:
        r = await self._client.get(
            "/v1/node/snapshot", params={"after": self.applied, "wait_s": LONG_POLL_S}
        )
        if r.status_code == 204:
            return False
        r.raise_for_status()
        envelope = r.content
        try:
            snapshot = await self.apply(envelope)
        except SnapshotRejected as e:
            error = f"refused revision {r.headers.get('edge-revision', '?')}: {e.message}"
            if error != self.last_error:  # say it once, not at every retry
                kept = "the last good state" if self.applied >= 0 else "nothing until it is fixed"
                self.say(f"{error}; still serving {kept}")
            self.last_error = error
            await self.report()
            raise
        self.convergence_ms = max(0.0, (time.time() - snapshot.created_unix) * 1000)
        self.say(f"applied revision {snapshot.revision} in {self.convergence_ms:.0f} ms")
        await self.report()
        return True

    @property
    def own_url(self) -> str:
        return self.runtime.config.advertised_url

    async def heartbeat(self) -> None:
        while True:
            await self.report()
            await asyncio.sleep(HEARTBEAT_S)

    async def report_traffic(self) -> None:
        tally = self.runtime.tally
        observations = tally.observations
        if observations == self._traffic_sent:
            return
        body = {
            "node_id": self.runtime.config.node_id,
            "region": self.runtime.config.region,
            "started_unix": tally.started_unix,
            "series": tally.series(),
        }
        with contextlib.suppress(httpx.HTTPError):  # counters since start: the next one catches up
            r = await self._client.post("/v1/node/traffic", json=body)
            if r.is_success:
                self._traffic_sent = observations

    async def traffic(self) -> None:
        while True:
            await asyncio.sleep(TRAFFIC_S)
            await self.report_traffic()

    async def run(self) -> None:
        beat = asyncio.create_task(self.heartbeat())
        counters = asyncio.create_task(self.traffic())
        failures = 0
        try:
            while True:
                try:
                    await self.poll_once()
                    failures = 0
                except (httpx.HTTPError, SnapshotRejected) as e:
                    if isinstance(e, httpx.HTTPError) and failures == 0:
                        self.say(f"control plane unreachable ({type(e).__name__}); serving on")
                    await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                    failures += 1
        finally:
            beat.cancel()
            counters.cancel()
            await self._client.aclose()
