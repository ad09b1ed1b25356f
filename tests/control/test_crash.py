"""Crash safety: SIGKILL the control plane (a real process) while another process deploys in a
loop; after each restart the database opens, revisions are contiguous and every version's blob
is on disk with the right sha256."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from edge.control.signing import Signer
from edge.control.snapshot import build_snapshot, open_snapshot
from edge.control.store import Store
from tests.control.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_ready(url: str, data: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            token = json.loads((data / "tokens.json").read_text())["admin"]
            r = httpx.get(url + "/v1/public-key", headers={"authorization": f"Bearer {token}"})
            if r.status_code == 200:
                return str(token)
        except (OSError, ValueError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise AssertionError("control plane did not start:\n" + log.read_text())


def wait_revision_above(
    url: str, token: str, revision: int, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        r = httpx.get(url + "/v1/status", headers={"authorization": f"Bearer {token}"}, timeout=10)
        if r.status_code == 200 and r.json()["revision"] > revision:
            return
        time.sleep(0.05)
    raise AssertionError(f"no deploy got through in 60 s:\n{log.read_text()}")


def check_consistent(data: Path) -> int:
    db = sqlite3.connect(data / "control.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()
    with Store(data) as store:
        numbers = [r.number for r in store.revisions()]
        assert numbers == list(range(1, len(numbers) + 1))
        for name in store.function_names(1):
            for v in store.versions(1, name):
                blob = store.blobs.get(v.sha256)
                assert len(blob) == v.size_bytes
                assert hashlib.sha256(blob).hexdigest() == v.sha256
        if numbers:
            signer = Signer.load_or_create(data / "signing.key")
            snap = open_snapshot(build_snapshot(store, numbers[-1], signer), signer.public_key)
            assert snap.revision == numbers[-1]
        return len(numbers)


def test_sigkill_mid_deploy_loses_nothing_committed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "control.log"
    revisions = 0
    for round_ in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = spawn(["edge.control", "control", "--data", str(data), "--listen",
                        f"127.0.0.1:{port}"], log)
        try:
            token = wait_ready(url, data, server, log)
            loop = spawn(["tests.control.deploy_loop", url, token], tmp_path / "loop.log")
            # The kill must land after a deploy got through: on a loaded machine the loop's
            # interpreter alone can take longer to start than any fixed sleep.
            wait_revision_above(url, token, revisions, server, log)
            time.sleep(0.2 + 0.3 * round_)
            os.kill(server.pid, signal.SIGKILL)
            server.wait(10)
            loop.wait(20)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        now = check_consistent(data)
        assert now > revisions, f"round {round_}: no deploy got through:\n{log.read_text()}"
        revisions = now
    assert (data / "signing.key").stat().st_mode & 0o777 == 0o600
    assert (data / "tokens.json").stat().st_mode & 0o777 == 0o600
