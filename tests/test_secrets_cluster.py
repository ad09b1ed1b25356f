"""Secrets sealed at rest, end to end: a control plane and nodes as real processes on 127.0.0.1.

The node with the fleet's key serves the secret to the C config example's config.get (and again
after a restart, from what it kept on disk with the control plane down); nodes without it, or
with another key, answer that function 503 secret_unavailable and keep serving the others. No
file the control plane or a node wrote holds the secret, nor does the snapshot on the wire.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edge.control.sealing import KEY_FILE, SecretsKey, from_text, sealed_key_id, to_text
from edge.control.snapshot import Snapshot, open_snapshot
from edge.control.store import DB_NAME
from edge.node.follower import PUBLIC_SECRET_MESSAGE

from .cluster import Control, converge, follower, start_control
from .conftest import EXAMPLES, REPO, NodeFactory, Proc, free_port, wait_until
from .test_config_values_cluster import cli, cli_json

pytestmark = pytest.mark.toolchain

SECRET = "sealed-greeting-5be1c0"
FUNCTION = "config-c"


def raw_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def rotate(control: Control, new_key: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`edge rotate-secrets-key` on the control plane's data directory."""
    return subprocess.run(
        [sys.executable, "-m", "edge", "rotate-secrets-key", "--data", str(control.data),
         "--new-key", str(new_key), *flags],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def deploy_with_secret(control: Control, tmp_path: Path, secret: str = SECRET) -> None:
    """The C hello (at /hello) and config (at /) examples, the config one's greeting a secret."""
    for example, route in (("hello", "*/hello"), ("config", "*/")):
        project = tmp_path / example
        shutil.copytree(EXAMPLES / "c" / example, project, ignore=shutil.ignore_patterns("build"))
        cli(control, "deploy", str(project), "--route", route)
    with control.client() as client:
        converge(client, cli_json(control, "config", "set", FUNCTION, f"greeting={secret}",
                                  "--secret"))


def assert_unavailable(node: Proc, key_id: str, what: str) -> None:
    url = node.url
    r = httpx.get(url + "/")
    assert r.status_code == 503, r.text
    body = r.json()
    # The client learns that a secret is missing, not which value nor which keys: those are
    # in the node's log (and `edge status`) for its operator.
    assert body["error"] == "secret_unavailable" and body["message"] == PUBLIC_SECRET_MESSAGE
    assert key_id not in r.text and "greeting" not in r.text and SECRET not in r.text
    assert what in node.log() and key_id in node.log()
    hello = httpx.get(url + "/hello")  # another function on the same node serves on
    assert hello.status_code == 200 and hello.text == "Hello from C!\n"
    ready = httpx.get(url + "/readyz").json()
    assert ready["ready"] and ready["unavailable"] == [f"default/{FUNCTION}"]


def test_secrets_are_sealed_on_every_disk_and_open_only_with_the_fleet_key(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    key_file = control.data / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_id = SecretsKey.load(key_file).key_id
    assert f"secrets key {key_id}" in control.proc.log()
    wrong_file = tmp_path / "wrong.key"
    wrong = SecretsKey.load_or_create(wrong_file)
    states = {name: tmp_path / name for name in ("good", "nokey", "wrong")}
    good = follower(start_node, control, "sec-good", "eu-west", states["good"])
    nokey = follower(start_node, control, "sec-nokey", "eu-west", states["nokey"],
                     secrets_key=False)
    other = follower(start_node, control, "sec-wrong", "eu-west", states["wrong"],
                     secrets_key=False, extra=f'secrets_key_file = "{wrong_file}"\n')
    deploy_with_secret(control, tmp_path)

    with control.client() as client:
        # The function reads the secret through config.get on the node that has the key ...
        assert httpx.get(good.url + "/").text == SECRET + "\n"
        # ... and is never served without it elsewhere: a typed 503 naming the key it needs.
        assert_unavailable(nokey, key_id, "no secrets key")
        assert_unavailable(other, key_id, wrong.key_id)
        for node in (nokey, other):
            assert "secret_unavailable" in node.log() and key_id in node.log()
        errors = {n["id"]: n["last_error"] for n in client.status()["nodes"]}
        assert key_id in errors["sec-nokey"] and key_id in errors["sec-wrong"]
        assert errors["sec-good"] == ""

        # No byte written by the control plane or a node, nor the snapshot on the wire,
        # holds the secret.
        wire = httpx.get(control.url + "/v1/node/snapshot", params={"after": -1},
                         headers={"authorization": f"Bearer {control.tokens['node']}"})
        assert wire.status_code == 200 and SECRET.encode() not in wire.content
        assert SECRET.encode() not in raw_bytes(control.data)
        for state in states.values():
            assert (state / "snapshot.cbor").exists()
            assert SECRET.encode() not in raw_bytes(state)
        for proc in (control.proc, good, nokey, other):
            assert SECRET not in proc.log()

        # A sealed value changed in the database: a typed error on that function alone.
        with sqlite3.connect(control.data / DB_NAME) as db:
            text = db.execute("SELECT value FROM function_config WHERE secret = 1").fetchone()[0]
            changed = bytearray(from_text(text))
            changed[-1] ^= 0x01
            db.execute("UPDATE function_config SET value = ? WHERE secret = 1",
                       (to_text(bytes(changed)),))
        converge(client, cli_json(control, "config", "set", FUNCTION, "touch=1"))
        assert_unavailable(good, key_id, "does not open")
        # Set again, it serves again: the versions stayed loaded while the value was bad.
        converge(client, cli_json(control, "config", "set", FUNCTION, f"greeting={SECRET}",
                                  "--secret"))
        assert httpx.get(good.url + "/").text == SECRET + "\n"

    # Restarted with the control plane gone, the node opens what it kept on disk.
    good.stop()
    control.proc.stop()
    again = follower(start_node, control, "sec-good", "eu-west", states["good"])
    assert httpx.get(again.url + "/").text == SECRET + "\n"
    assert SECRET.encode() not in raw_bytes(states["good"])


def test_a_node_whose_key_file_is_missing_or_bad_does_not_start(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    for path in (tmp_path / "missing.key", bad):
        with pytest.raises(AssertionError) as e:
            follower(start_node, control, "sec-bad", "eu-west", tmp_path / "state",
                     secrets_key=False, extra=f'secrets_key_file = "{path}"\n')
        assert path.name in str(e.value)


def test_rotating_the_key_keeps_the_node_serving_and_retires_the_old_key(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    old_file = control.data / KEY_FILE
    old, new_file = SecretsKey.load(old_file), tmp_path / "new.key"
    state = tmp_path / "rot"
    node = follower(start_node, control, "rot-1", "eu-west", state)
    project = tmp_path / "config"
    shutil.copytree(EXAMPLES / "c" / "config", project, ignore=shutil.ignore_patterns("build"))
    cli(control, "deploy", str(project), "--route", "*/")
    with control.client() as client:
        converge(client, cli_json(control, "config", "set", FUNCTION, f"greeting={SECRET}",
                                  "--secret"))
    assert httpx.get(node.url + "/").text == SECRET + "\n"

    # 1. With the control plane stopped, everything is sealed again under a new key.
    control.proc.stop()
    r = rotate(control, new_file, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    new = SecretsKey.load(new_file)
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    assert (result["old_key_id"], result["new_key_id"]) == (old.key_id, new.key_id)
    assert result["functions"] == [f"default/{FUNCTION}"] and result["values"] >= 2
    assert SECRET.encode() not in raw_bytes(control.data)
    # 2. The node, given both keys, serves on from what it kept (still under the old key).
    node.stop()
    both = (f'secrets_key_file = "{new_file}"\n'
            f'previous_secrets_key_file = "{old_file}"\n')
    node = follower(start_node, control, "rot-1", "eu-west", state, secrets_key=False,
                    extra=both)
    assert httpx.get(node.url + "/").text == SECRET + "\n"
    # 3. The control plane starts with the new key; the node fetches the new revisions.
    restarted = start_control(control.data, control.port, tmp_path / "control-2.log",
                              ("--secrets-key", str(new_file)))
    try:
        assert f"secrets key {new.key_id}" in restarted.proc.log()
        with restarted.client() as client:
            assert client.wait_for(result["revisions"][-1], 60).converged

        def kept() -> Snapshot:
            return open_snapshot((state / "snapshot.cbor").read_bytes(),
                                 bytes.fromhex(control.tokens["public_key"]))

        # The node saves what it applied while its report is on the way (edge.node.follower):
        # the report, and so the convergence, can come first. A later revision counts too: the
        # restarted node's new address makes one, which it may apply and keep in between.
        wait_until(lambda: kept().revision >= result["revisions"][-1], 20, "snapshot kept", node)
        # 4. The old key is no longer needed: what the node keeps is under the new one.
        node.stop()
        sealed = kept().functions[f"default/{FUNCTION}"].sealed["greeting"]
        assert sealed_key_id(sealed) == new.key_id
        node = follower(start_node, control, "rot-1", "eu-west", state, secrets_key=False,
                        extra=f'secrets_key_file = "{new_file}"\n')
        assert httpx.get(node.url + "/").text == SECRET + "\n"
        assert SECRET.encode() not in raw_bytes(state)
        assert "secrets_key_mismatch" not in restarted.proc.log()
    finally:
        restarted.proc.stop()


def test_a_data_directory_in_use_refuses_a_second_control_plane_and_a_rotation(
    control: Control, tmp_path: Path
) -> None:
    edge = [sys.executable, "-m", "edge"]
    second = subprocess.run(
        [*edge, "control", "--data", str(control.data), "--listen", f"127.0.0.1:{free_port()}"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    rotation = rotate(control, tmp_path / "new.key")
    for r in (second, rotation):
        assert r.returncode != 0, r.stdout
        assert "is in use by edge control (pid" in r.stderr and "Traceback" not in r.stderr
    # The running one serves on; the refused rotation made no key file.
    assert httpx.get(control.url + "/v1/status").status_code == 401
    assert not (tmp_path / "new.key").exists()
    # Once it stops, the directory is free again: the lock went with the process.
    control.proc.stop()
    r = rotate(control, tmp_path / "new.key", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["new_key_id"] == SecretsKey.load(tmp_path / "new.key").key_id
