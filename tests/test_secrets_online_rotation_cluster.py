"""The secrets key rotated online: a control plane and a node as real processes on 127.0.0.1,
the control plane running and the node serving a function that reads a secret throughout.

The README's procedure: (1) the node gets the new key as its previous_secrets_key_file (it
accepts both); (2) `edge rotate-secrets-key --online`; the node fetches the revisions sealed
under the new key; (3) the new key moved over the node's secrets_key_file, the old one gone.
Nothing in the database stays under the old key, a write right after is under the new one, and
the control plane restarted with its usual command line opens everything with the new key.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from edge.control.rotation import previous_file
from edge.control.sealing import KEY_FILE, SecretsKey

from .cluster import Control, converge, follower, start_control
from .conftest import NodeFactory, Proc, wait_until
from .control.test_admin import sealed_ids
from .test_config_values_cluster import cli_json
from .test_secrets_cluster import FUNCTION, deploy_with_secret
from .test_secrets_key_reload_cluster import LOOK_S, keyed_follower, put, readyz

pytestmark = pytest.mark.toolchain

SECRET = "online-greeting-31c9"
AFTER = "after-rotation-8e02"


class Watch:
    """Asks the node for the secret's function until stopped, keeping every answer that is not
    200 with one of the values the test set (the node serves each until it applies the next)."""

    def __init__(self, node: Proc, values: tuple[str, ...]) -> None:
        self.node = node
        self.allowed = {v + "\n" for v in values}
        self.asked = 0
        self.wrong: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                r = client.get(self.node.url + "/")
                if r.status_code != 200 or r.text not in self.allowed:
                    self.wrong.append((r.status_code, r.text))
                self.asked += 1
                time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_online_rotation_with_the_node_serving_the_secret_throughout(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    key_file = control.data / KEY_FILE
    old = SecretsKey.load(key_file)
    node, current, previous = keyed_follower(start_node, control, "online-1", tmp_path)
    deploy_with_secret(control, tmp_path, SECRET)
    assert httpx.get(node.url + "/").text == SECRET + "\n"
    watch = Watch(node, (SECRET, AFTER))
    restarted: Control | None = None
    try:
        # 1. The node accepts the new key too (made here: the control plane's machine).
        new_file = tmp_path / "new.key"
        new = SecretsKey.load_or_create(new_file)
        put(previous, new_file.read_text())
        node.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: sorted(readyz(node)["secrets_keys"]["key_ids"])
                   == sorted([old.key_id, new.key_id]), LOOK_S, "both keys taken", node)

        # 2. Rotated online: the control plane's process stays the same.
        result = cli_json(control, "rotate-secrets-key", "--online", "--new-key", str(new_file))
        assert (result["old_key_id"], result["new_key_id"]) == (old.key_id, new.key_id)
        assert result["functions"] == [f"default/{FUNCTION}"]
        with control.client() as client:
            assert client.wait_for(result["revisions"][-1], 60).converged
            assert readyz(node)["revision"] == result["revisions"][-1]
            assert sealed_ids(control.data) == {new.key_id}
            assert SecretsKey.load(key_file).key_id == new.key_id
            assert SecretsKey.load(Path(result["previous_key_file"])).key_id == old.key_id
            # A write right after is sealed under the new key, and served.
            converge(client, cli_json(control, "config", "set", FUNCTION, f"greeting={AFTER}",
                                      "--secret"))
            assert sealed_ids(control.data) == {new.key_id}
            assert httpx.get(node.url + "/").text == AFTER + "\n"

        # 3. The new key becomes the node's only key: one rename, the old key gone with it.
        os.replace(previous, current)
        node.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: readyz(node)["secrets_keys"]["key_ids"] == [new.key_id], LOOK_S,
                   "old key dropped", node)
        assert httpx.get(node.url + "/").text == AFTER + "\n"
        assert readyz(node)["unavailable"] == []

        # The control plane restarted with its usual command line seals and opens with NEW.
        assert control.proc.proc.poll() is None
        control.proc.stop()
        restarted = start_control(control.data, control.port, tmp_path / "control-2.log")
        log = restarted.proc.log()
        assert f"secrets key {new.key_id}" in log and "secrets_key_mismatch" not in log
        with restarted.client() as client:
            converge(client, cli_json(restarted, "config", "set", FUNCTION,
                                      f"greeting={SECRET}", "--secret"))
        assert sealed_ids(control.data) == {new.key_id}
        assert httpx.get(node.url + "/").text == SECRET + "\n"
    finally:
        watch.stop()
        if restarted is not None:
            restarted.proc.stop()
    assert watch.asked > 0 and watch.wrong == []
    assert node.proc.poll() is None and "secret_unavailable" not in node.log()
    assert SECRET not in node.log() and AFTER not in control.proc.log()


def test_nodes_on_the_control_planes_own_key_files_serve_on_when_they_look_mid_rotation(
    control: Control, start_node: NodeFactory, tmp_path: Path
) -> None:
    """`edge up` runs its nodes on the control plane's key file and on the file an online
    rotation keeps the old key in (`<key file>.previous`). The rotation writes that one first,
    then NEW over the key file, then tells the nodes of the revisions sealed under NEW. A node
    that looks at its files in between (here: the files written as the rotation writes them,
    then SIGHUP, before any rotation) opens what it serves with the old key still; one on the
    key file alone (as `edge up` ran them before) answered 503 until the revisions came."""
    key_file = control.data / KEY_FILE
    old = SecretsKey.load(key_file)
    both = follower(start_node, control, "own-files", "eu-west", tmp_path / "state-1",
                    extra=f'previous_secrets_key_file = "{previous_file(key_file)}"\n')
    alone = follower(start_node, control, "key-file-alone", "eu-west", tmp_path / "state-2")
    deploy_with_secret(control, tmp_path, SECRET)
    for node in (both, alone):
        assert httpx.get(node.url + "/").text == SECRET + "\n"
    new_file = tmp_path / "new.key"
    new = SecretsKey.load_or_create(new_file)
    put(previous_file(key_file), key_file.read_text())
    put(key_file, new_file.read_text())
    for node in (both, alone):
        node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: sorted(readyz(both)["secrets_keys"]["key_ids"])
               == sorted([old.key_id, new.key_id]), LOOK_S, "both keys taken", both)
    wait_until(lambda: readyz(alone)["secrets_keys"]["key_ids"] == [new.key_id], LOOK_S,
               "the new key taken", alone)
    assert httpx.get(both.url + "/").text == SECRET + "\n"
    assert readyz(both)["unavailable"] == []
    assert httpx.get(alone.url + "/").status_code == 503  # the window this closes

    # The rotation itself (its files are as above already): both serve what it sealed.
    result = cli_json(control, "rotate-secrets-key", "--online", "--new-key", str(new_file))
    assert result["new_key_id"] == new.key_id
    with control.client() as client:
        assert client.wait_for(result["revisions"][-1], 60).converged
    for node in (both, alone):
        assert httpx.get(node.url + "/").text == SECRET + "\n"
        assert readyz(node)["unavailable"] == []
    assert "secret_unavailable" not in both.log() and SECRET not in both.log()
