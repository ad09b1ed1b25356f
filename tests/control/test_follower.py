"""A node's follower against a real control plane on 127.0.0.1: snapshots that are unsigned,
signed by another key, or changed on the node's own disk are refused, and the last good state
keeps serving. (tests/test_cluster.py covers tampered blobs and a wrong key with node
processes.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest

from edge.config.toml_fields import load_toml
from edge.control.errors import SnapshotRejected
from edge.control.sealing import SecretsKey
from edge.control.signing import Signer, canonical_cbor
from edge.control.snapshot import build_snapshot, sign_payload
from edge.control.wire import METADATA_HEADER, encode_metadata
from edge.node.config import parse_node_config
from edge.node.follower import KEY_RETRY_S, ControlSettings, Follower
from edge.node.keyfiles import KeyFiles
from edge.node.logs import LogWriter
from edge.node.persisted import SNAPSHOT_FILE, NodeState
from edge.node.runtime import NodeRuntime, Unavailable
from edge.sandbox.function import LoadedFunction
from tests.conftest import EXAMPLES
from tests.control.conftest import ControlServer, run_until

pytestmark = pytest.mark.toolchain
Start = Callable[..., ControlServer]


def make_follower(
    server: ControlServer, tmp_path: Path, state: Path, secrets: KeyFiles | None = None
) -> Follower:
    config = parse_node_config({"node": {"cache_dir": str(tmp_path / "compiled")}}, "test",
                               tmp_path)
    runtime = NodeRuntime(config, LogWriter("json"))
    settings = ControlSettings(server.url, server.node, server.signer.public_key,
                               secrets or KeyFiles.none())
    return Follower(runtime, settings, NodeState(state), say=lambda _: None)


def test_unsigned_wrongly_signed_and_locally_changed_snapshots_are_refused(
    start_control: Start, built: Callable[[Path], Path], tmp_path: Path
) -> None:
    server = start_control()
    revision = deploy_example(server, built, "hello")
    state = tmp_path / "state"
    follower = make_follower(server, tmp_path, state)

    async def scenario() -> None:
        assert await follower.poll_once()
        good = follower.runtime.deployment
        assert good.revision == revision
        assert isinstance(good.functions["default/hello-c"].stable, LoadedFunction)
        payload = cbor2.loads(build_snapshot(server.store, revision, server.signer))["payload"]
        unsigned = canonical_cbor({"payload": payload, "key_id": server.signer.key_id})
        for bad in (unsigned, sign_payload(payload, Signer.generate())):
            with pytest.raises(SnapshotRejected):
                await follower.apply(bad)
            assert follower.runtime.deployment is good  # the last good state serves on
        await follower.close()
        follower.runtime.close()

    asyncio.run(scenario())
    # Restarted, the node serves what it kept, verified again ...
    again = make_follower(server, tmp_path, state)
    assert asyncio.run(again.restore()) and again.runtime.deployment.revision == revision
    again.runtime.close()
    # ... and refuses it when it was changed on disk: it waits for the control plane instead.
    (state / SNAPSHOT_FILE).write_bytes(unsigned_copy(state / SNAPSHOT_FILE))
    changed = make_follower(server, tmp_path, state)
    assert not asyncio.run(changed.restore())  # restore makes no request: nothing to close
    assert changed.runtime.deployment.revision is None and not changed.runtime.deployment.ready
    changed.runtime.close()


def deploy_example(server: ControlServer, built: Callable[[Path], Path], name: str) -> int:
    """The C example `name` uploaded and deployed at */ as "NAME-c"; returns the revision."""
    project = EXAMPLES / "c" / name
    admin = server.client(server.admin)
    r = admin.post(f"/v1/functions/{name}-c/versions", content=built(project).read_bytes(),
                   headers={METADATA_HEADER: encode_metadata(load_toml(project / "edge.toml"),
                                                             "")})
    assert r.status_code == 201, r.text
    r = admin.post(f"/v1/functions/{name}-c/deploy", json={"version": 1, "routes": ["*/"]})
    assert r.status_code == 200, r.text
    revision: int = r.json()["revision"]
    return revision


def unsigned_copy(path: Path) -> bytes:
    envelope = cbor2.loads(path.read_bytes())
    return canonical_cbor({"payload": envelope["payload"], "key_id": envelope["key_id"]})


def test_revision_zero_has_no_convergence_time(
    start_control: Start, tmp_path: Path
) -> None:
    """Revision 0 (a control plane nothing was done with yet) was made at no time: the node
    used to report it as applied ~56 years after it was made."""
    server = start_control()
    said: list[str] = []
    follower = make_follower(server, tmp_path, tmp_path / "state")
    follower.say = said.append

    async def scenario() -> None:
        assert await follower.poll_once()
        await follower.close()

    asyncio.run(scenario())
    follower.runtime.close()
    assert follower.applied == 0 and follower.convergence_ms is None
    assert said == ["applied revision 0"]
    (node,) = server.store.nodes()
    assert node.applied_revision == 0 and node.convergence_ms is None


def test_the_key_file_watch_survives_a_failing_look(start_control: Start, tmp_path: Path) -> None:
    server = start_control()
    said: list[str] = []
    follower = make_follower(server, tmp_path, tmp_path / "state")
    follower.say = said.append
    looks: list[int] = []

    async def check_keys() -> None:
        looks.append(len(looks))
        if len(looks) == 1:
            raise RuntimeError("a bug in the look")

    follower.check_keys = check_keys  # type: ignore[method-assign]

    async def scenario() -> None:
        watch = asyncio.create_task(follower.watch_keys())
        for _ in range(2):  # SIGHUP twice: the second look must still happen
            follower.recheck_keys()
            for _ in range(200):
                await asyncio.sleep(0.01)
                if not follower._recheck_keys.is_set():
                    break
        await asyncio.sleep(0.05)
        watch.cancel()
        await follower.close()

    asyncio.run(scenario())
    follower.runtime.close()
    assert looks == [0, 1]
    assert said == [
        "error: checking the secrets key files failed: RuntimeError('a bug in the look')"
    ]


def test_following_goes_on_after_an_unexpected_failure(
    start_control: Start, tmp_path: Path
) -> None:
    server = start_control()
    said: list[str] = []
    follower = make_follower(server, tmp_path, tmp_path / "state")
    follower.say = said.append
    polls: list[int] = []

    async def poll_once() -> bool:
        polls.append(len(polls))
        if len(polls) == 1:
            raise IsADirectoryError("a directory where a blob file should be")
        await asyncio.sleep(3600)  # the next poll reached: the loop went on
        return True

    follower.poll_once = poll_once  # type: ignore[method-assign]

    asyncio.run(run_until(follower.run(), lambda: len(polls) == 2))  # run closes the follower
    follower.runtime.close()
    assert polls == [0, 1]
    assert said[0] == ("error: following the control plane failed: IsADirectoryError('a "
                       "directory where a blob file should be'); trying again")


@pytest.mark.parametrize(("loop", "step", "period", "what"), [
    ("heartbeat", "report", "HEARTBEAT_S", "reporting to the control plane"),
    ("traffic", "report_traffic", "TRAFFIC_S", "reporting traffic to the control plane"),
])  # fmt: skip
def test_the_reporting_loops_survive_a_failing_step(
    start_control: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    loop: str, step: str, period: str, what: str,
) -> None:
    """The heartbeat ended on an unexpected failure: the node served on, reporting nothing,
    and the control plane saw it as gone."""
    monkeypatch.setattr(f"edge.node.follower.{period}", 0.0)  # no 5 s wait for the next beat
    server = start_control()
    said: list[str] = []
    follower = make_follower(server, tmp_path, tmp_path / "state")
    follower.say = said.append
    steps: list[int] = []

    async def failing_once() -> None:
        steps.append(len(steps))
        if len(steps) == 1:
            raise RuntimeError("a bug in the report")

    monkeypatch.setattr(follower, step, failing_once)

    async def scenario() -> None:
        await run_until(getattr(follower, loop)(), lambda: len(steps) >= 2)
        await follower.close()

    asyncio.run(scenario())
    follower.runtime.close()
    assert steps[:2] == [0, 1]
    assert said == [f"error: {what} failed: RuntimeError('a bug in the report')"]


def test_a_function_waiting_for_its_secrets_key_takes_it_without_waiting_for_a_heartbeat(
    start_control: Start, built: Callable[[Path], Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A function whose secret no key of the node opens answers 503 until its key is put in
    place; the node looked at its key files only every heartbeat (5 s) or on SIGHUP. While one
    does, it looks every KEY_RETRY_S."""
    monkeypatch.setattr("edge.node.follower.HEARTBEAT_S", 3600.0)  # only the retry can see it
    server = start_control()
    deploy_example(server, built, "config")
    admin = server.client(server.admin)
    r = admin.put("/v1/functions/config-c/config",
                  json={"values": {"greeting": "sealed-hello"}, "secret": ["greeting"]})
    assert r.status_code == 200, r.text
    # The node has another key, and the control plane's is not in its files yet.
    current, previous = tmp_path / "current.key", tmp_path / "previous.key"
    SecretsKey.load_or_create(current)
    secrets = KeyFiles.load([current, previous], optional=[previous])
    follower = make_follower(server, tmp_path, tmp_path / "state", secrets)
    said: list[str] = []
    follower.say = said.append

    def served() -> object:
        return follower.runtime.deployment.functions["default/config-c"].stable

    async def scenario() -> None:
        watch = asyncio.create_task(follower.watch_keys())
        assert await follower.poll_once()
        assert isinstance(served(), Unavailable)
        await asyncio.sleep(3 * KEY_RETRY_S)  # looks that find nothing new change nothing
        assert isinstance(served(), Unavailable)
        server.store.secrets_key.save(previous)  # no SIGHUP, no new revision
        for _ in range(400):
            if isinstance(served(), LoadedFunction):
                break
            await asyncio.sleep(0.025)
        watch.cancel()
        await follower.close()

    asyncio.run(scenario())
    follower.runtime.close()
    assert isinstance(served(), LoadedFunction), said
    assert follower.runtime.deployment.functions["default/config-c"].values == {
        "greeting": "sealed-hello"}
    assert "default/config-c: its secrets open again; serving it" in said
