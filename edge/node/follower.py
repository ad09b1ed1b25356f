"""Following a control plane: long-poll signed snapshots, fetch and verify blobs, compile, switch.

The node connects out (so it may sit behind NAT) and asks for anything newer than the revision
it applied. A new snapshot is verified (signature, then every version's signature and every
blob's sha256), every version is compiled, and only then is the routing table switched, in one
assignment, so no request sees half a revision and none pays compilation. Anything refused
leaves the last good state serving and is reported. The applied snapshot and blobs are kept on
disk, so a restarted node serves them before the control plane answers, if it ever does.

A version is known by (function, number, sha256), all covered by its signature: one compiled
and verified before needs neither its blob nor a compile again. The versions served now and the
`KEEP_LOADED` most recently replaced ones stay loaded, so a rollback switches at once. Disk
reads, hashing and fsyncs run on worker threads: the event loop keeps serving requests. New
blobs and the snapshot are written (blobs first) after the switch, while the report is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from edge.control.client import describe_failure
from edge.control.errors import SecretUnavailable, SnapshotRejected
from edge.control.sealing import Keyring
from edge.control.snapshot import (
    FunctionDeployment,
    SignedVersion,
    Snapshot,
    open_snapshot,
    verify_blob,
)
from edge.errors import EdgeError
from edge.node.background import carry_on
from edge.node.keyfiles import KeyFiles, describe, read_keys, stamps
from edge.node.persisted import NodeState
from edge.node.runtime import Loaded, NodeRuntime, Served, Unavailable
from edge.node.spill import Topology
from edge.node.traffic_report import traffic_series
from edge.sandbox.function import LoadedFunction

LONG_POLL_S = 25.0
KEEP_LOADED = 8  # loaded versions kept beyond those served, for rollbacks
HEARTBEAT_S = 5.0
# How often the key files are looked at while a function answers 503 secret_unavailable: its key
# may be on its way (an operator copying it in), and a look is a stat per file.
KEY_RETRY_S = 0.25
TRAFFIC_S = 1.0  # traffic counters, for the dashboard's live view; only when they moved
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


VersionKey = tuple[str, int, str]


def _key(v: SignedVersion) -> VersionKey:
    return (v.function, v.number, v.sha256)


@dataclass(frozen=True)
class ControlSettings:
    url: str
    token: str
    public_key: bytes
    # Opens the functions' secret config values (edge.control.sealing), followed while the
    # node runs (edge.node.keyfiles); none: every function with a secret answers 503
    # secret_unavailable.
    secrets: KeyFiles = field(default_factory=KeyFiles.none)


PUBLIC_SECRET_MESSAGE = (
    "this function cannot be served on this node: a secret config value it needs cannot be "
    "opened here; the node's operator sees why in its log and in `edge status`"
)

def _versions(snapshot: Snapshot) -> list[SignedVersion]:
    return [v for d in snapshot.functions.values() for v in (d.stable, d.canary) if v is not None]


def _open_values(d: FunctionDeployment, keyring: Keyring) -> Mapping[str, str]:
    """The function's config values with its secrets opened, in memory only."""
    if not d.sealed:
        return d.values
    opened = {k: keyring.open(v, d.function, k) for k, v in d.sealed.items()}
    return {**d.values, **opened}


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
        self._lost = False  # the control plane failed a call, and nothing succeeded since
        # Loaded versions by (function, number, sha256), least recently served first.
        self._loaded: OrderedDict[VersionKey, Loaded] = OrderedDict()
        self._report_lock = asyncio.Lock()
        # One switch at a time: a key reload re-opening the served snapshot must not interleave
        # with a new snapshot being applied.
        self._switch_lock = asyncio.Lock()
        self._snapshot: Snapshot | None = None  # the one served
        self._recheck_keys = asyncio.Event()  # SIGHUP: look at the key files now
        self._secret_errors: dict[str, str] = {}  # by function, as last said
        self._traffic_sent: list[dict[str, Any]] = []  # the series the control plane last took
        self._client = httpx.AsyncClient(
            base_url=settings.url,
            headers={"authorization": f"Bearer {settings.token}"},
            timeout=httpx.Timeout(10.0, read=LONG_POLL_S + 10),
            trust_env=False,
        )

    # --- applying ---------------------------------------------------------------------------

    def _load_version(self, v: SignedVersion, data: bytes | None) -> Loaded:
        key = _key(v)
        if key not in self._loaded:
            assert data is not None  # apply fetched every blob not loaded yet
            try:
                self._loaded[key] = LoadedFunction(
                    self.runtime.engine, self.runtime.cache, data, v.config, self.runtime.sink
                )
            except EdgeError as e:
                self._loaded[key] = Unavailable(e)
        self._loaded.move_to_end(key)
        return self._loaded[key]

    async def _blob(self, v: SignedVersion, fetch: bool, fetched: dict[str, bytes]) -> bytes:
        """The verified bytes of `v`: from disk, else from the control plane (into `fetched`,
        for the caller to save: the fsync need not delay the switch)."""
        if self.state.has_blob(v.sha256):  # a stat, no thread hop for a blob that is new
            data = await anyio.to_thread.run_sync(self.state.blob, v.sha256)
            if data is not None:
                verify_blob(v, data)
                return data
        if not fetch:
            raise SnapshotRejected(f"{v.function} v{v.number}: blob missing on disk")
        r = await self._client.get(f"/v1/blobs/{v.sha256}")
        r.raise_for_status()
        verify_blob(v, r.content)  # raises BlobMismatch: a tampered blob is never stored or run
        fetched[v.sha256] = r.content
        return r.content

    async def apply(self, envelope: bytes, *, fetch: bool = True) -> Snapshot:
        """Verifies, loads and switches to `envelope` (fetching missing blobs if `fetch`, and
        saving them before it returns)."""
        snapshot, fetched = await self._switch(envelope, fetch)
        await anyio.to_thread.run_sync(self._persist, fetched, None)
        return snapshot

    def _persist(self, fetched: dict[str, bytes], envelope: bytes | None) -> None:
        # Blobs first: a snapshot on disk never names a blob that is not there.
        for sha256, data in fetched.items():
            self.state.save_blob(sha256, data)
        if envelope is not None:
            self.state.save_snapshot(envelope)

    async def _switch(self, envelope: bytes, fetch: bool) -> tuple[Snapshot, dict[str, bytes]]:
        async with self._switch_lock:
            snapshot = open_snapshot(envelope, self.settings.public_key)
            blobs: dict[str, bytes] = {}
            fetched: dict[str, bytes] = {}
            for v in _versions(snapshot):
                if _key(v) not in self._loaded and v.sha256 not in blobs:
                    blobs[v.sha256] = await self._blob(v, fetch, fetched)
            await self._reload_keys()  # a new revision may need the key a rotation just put
            await self._deploy(snapshot, blobs)
            return snapshot, fetched

    async def _deploy(self, snapshot: Snapshot, blobs: dict[str, bytes]) -> None:
        """Loads (compiling what `blobs` holds), opens the secrets with the keyring as it is
        now, and switches to `snapshot` in one assignment."""
        versions = _versions(snapshot)
        keyring = self.settings.secrets.keyring
        secret_errors: dict[str, str] = {}  # by function: what compile_all could not open

        def compile_all() -> dict[str, Served]:
            served = {}
            for name, d in snapshot.functions.items():
                stable: Loaded = self._load_version(d.stable, blobs.get(d.stable.sha256))
                canary: Loaded | None = (
                    self._load_version(d.canary, blobs.get(d.canary.sha256)) if d.canary else None
                )
                try:
                    values = _open_values(d, keyring)
                except SecretUnavailable as e:
                    # Never served without its secret: that function answers the error, the
                    # others serve on. Its versions stay loaded for when the key comes. Its
                    # clients learn only that; which value and which keys is for the
                    # operator (log, `edge status`), as a config key's name can say a lot.
                    values = {}
                    public = Unavailable(SecretUnavailable(PUBLIC_SECRET_MESSAGE))
                    stable, canary = public, public if canary else None
                    secret_errors[name] = e.message
                served[name] = Served(
                    stable,
                    canary,
                    d.canary_percent,
                    d.sticky,
                    str(d.stable.number),
                    str(d.canary.number) if d.canary else "",
                    values,
                )
            return served

        if blobs:
            served = await anyio.to_thread.run_sync(compile_all)
        else:  # every version is loaded already (a rollback, a route change): no thread hop
            served = compile_all()
        self.runtime.deploy(
            snapshot.routes, served, revision=snapshot.revision,
            topology=Topology(snapshot.regions, snapshot.nodes),
        )  # fmt: skip
        live = {_key(v) for v in versions}
        old = [k for k in self._loaded if k not in live]
        for k in old[: max(0, len(old) - KEEP_LOADED)]:
            del self._loaded[k]
        self.applied = snapshot.revision
        self._snapshot = snapshot
        # Applied, but a version no request can run is an error the operator must see (status,
        # dashboard, `edge deploy`) as much as a refused snapshot.
        self.last_error = "; ".join([
            *(f"revision {snapshot.revision}: cannot load {v.function} v{v.number}: "
              f"{loaded.error.message}"
              for v in versions
              if isinstance(loaded := self._loaded.get(_key(v)), Unavailable)),
            *(f"revision {snapshot.revision}: {message}"
              for message in secret_errors.values()),
        ])
        for name, message in secret_errors.items():
            if self._secret_errors.get(name) != message:  # once, not at every revision
                self.say(f"error: {name} answers 503 secret_unavailable: {message}")
        for name in self._secret_errors.keys() - secret_errors.keys() & snapshot.functions.keys():
            self.say(f"{name}: its secrets open again; serving it")
        if secret_errors and not self._secret_errors:
            self._recheck_keys.set()  # the key watch may be in a heartbeat's wait: shorten it
        self._secret_errors = secret_errors

    # --- secrets keys -----------------------------------------------------------------------

    async def _reload_keys(self) -> bool:
        """Takes the key files if they changed since last read; True when the keys did (what
        is served must then be opened again). Under the switch lock."""
        files = self.settings.secrets
        now = stamps(files.paths)  # a stat each: cheap enough for every look, on the loop
        if not files.stale(now):
            return False
        before = files.error
        loaded = await anyio.to_thread.run_sync(read_keys, files.paths, files.optional)
        reload = files.settle(now, loaded)
        if reload.error and reload.error != before:  # once, not at every look
            self.say(f"error: new secrets key files not taken: {reload.error}")
        elif not reload.error and (reload.changed or before):  # taken: say what changed
            self.say(f"secrets key files read again: opening secrets with "
                     f"{describe(reload.keyring)}")
        return reload.changed

    async def check_keys(self) -> None:
        """Rereads the key files if they changed and, when the keys did, opens the served
        snapshot's secrets again: functions that answered 503 secret_unavailable serve, those
        whose secret the new keys do not open answer it."""
        files = self.settings.secrets
        if not files.stale(stamps(files.paths)):  # the common case takes no lock
            return
        error = files.error
        async with self._switch_lock:
            if await self._reload_keys() and self._snapshot is not None:
                await self._deploy(self._snapshot, {})  # its versions are all loaded
            elif files.error == error:
                return
        await self.report()  # the error went or came: `edge status` shows it now

    def recheck_keys(self) -> None:
        """Asks for a look at the key files now (SIGHUP), not at the next heartbeat."""
        self._recheck_keys.set()

    async def watch_keys(self) -> None:
        while True:
            wait_s = KEY_RETRY_S if self._secret_errors else HEARTBEAT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck_keys.wait(), wait_s)
            self._recheck_keys.clear()
            with carry_on(self.say, "checking the secrets key files"):
                await self.check_keys()

    @property
    def status_error(self) -> str:
        """What `edge status` shows for this node: the last apply's errors and the key files'."""
        return "; ".join(e for e in (self.last_error, self.settings.secrets.error) if e)

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
            "last_error": self.status_error[:2000],
            "url": self.own_url,
            # Where the geo-DNS server sends clients to this node (it reads them from the
            # control plane's region listing).
            "ipv4": self.runtime.config.dns_addresses[0],
            "ipv6": self.runtime.config.dns_addresses[1],
            "requests_total": self.runtime.metrics.requests_total(),
        }
        if self.convergence_ms is not None:
            body["convergence_ms"] = self.convergence_ms
        with contextlib.suppress(httpx.HTTPError):  # the next heartbeat tries again
            if (await self._client.post("/v1/node/report", json=body)).is_success:
                self._reached()

    def _reached(self) -> None:
        if self._lost:  # said once, like the loss
            self._lost = False
            self.say("control plane reachable again; following it")

    async def poll_once(self) -> bool:
        r = await self._client.get(
            "/v1/node/snapshot", params={"after": self.applied, "wait_s": LONG_POLL_S}
        )
        if r.status_code == 204:
            return False
        r.raise_for_status()
        envelope = r.content
        try:
            snapshot, fetched = await self._switch(envelope, fetch=True)
        except SnapshotRejected as e:
            error = f"refused revision {r.headers.get('edge-revision', '?')}: {e.message}"
            if error != self.last_error:  # say it once, not at every retry
                kept = "the last good state" if self.applied >= 0 else "nothing until it is fixed"
                self.say(f"{error}; still serving {kept}")
            self.last_error = error
            await self.report()
            raise
        if snapshot.created_unix > 0:  # revision 0 (nothing made yet) has no creation time
            self.convergence_ms = max(0.0, (time.time() - snapshot.created_unix) * 1000)
            self.say(f"applied revision {snapshot.revision} in {self.convergence_ms:.0f} ms")
        else:
            self.say(f"applied revision {snapshot.revision}")
        if self.last_error:
            self.say(self.last_error)
        # Kept for a restart (static stability) while the report is on its way: the report
        # does not wait for the fsyncs. A crash in between restarts from the snapshot before.
        await asyncio.gather(
            self.report(), anyio.to_thread.run_sync(self._persist, fetched, envelope)
        )
        return True

    @property
    def own_url(self) -> str:
        return self.runtime.config.advertised_url

    async def heartbeat(self) -> None:
        while True:
            with carry_on(self.say, "reporting to the control plane"):
                await self.report()
            await asyncio.sleep(HEARTBEAT_S)

    async def report_traffic(self) -> None:
        series = traffic_series(self.runtime.metrics)
        if series == self._traffic_sent:
            return
        body = {
            "node_id": self.runtime.config.node_id,
            "region": self.runtime.config.region,
            "started_unix": self.runtime.metrics.started_unix,
            "series": series,
        }
        with contextlib.suppress(httpx.HTTPError):  # counters since start: the next one catches up
            r = await self._client.post("/v1/node/traffic", json=body)
            if r.is_success:
                self._traffic_sent = series

    async def traffic(self) -> None:
        while True:
            await asyncio.sleep(TRAFFIC_S)
            with carry_on(self.say, "reporting traffic to the control plane"):
                await self.report_traffic()

    async def run(self) -> None:
        beat = asyncio.create_task(self.heartbeat())
        counters = asyncio.create_task(self.traffic())
        keys = asyncio.create_task(self.watch_keys())
        failures = 0
        try:
            while True:
                polled = False
                with carry_on(self.say, "following the control plane", "trying again"):
                    try:
                        await self.poll_once()
                        self._reached()
                        polled = True
                    except (httpx.HTTPError, SnapshotRejected) as e:
                        if isinstance(e, httpx.HTTPError) and not self._lost:
                            self._lost = True
                            self.say(f"cannot follow the control plane ({describe_failure(e)});"
                                     " serving on")
                if polled:
                    failures = 0
                else:  # refused, unreachable or unexpected: the same backoff
                    await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                    failures += 1
        finally:
            beat.cancel()
            counters.cancel()
            keys.cancel()
            await self.close()

    async def close(self) -> None:
        await self._client.aclose()
