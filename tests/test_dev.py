"""`edge dev` as a real process: serves, rebuilds on save, keeps the last good build on errors."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import EXAMPLES, Proc

pytestmark = pytest.mark.toolchain


def wait_for(check: Callable[[], bool], timeout_s: float, proc: Proc, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s}s:\n{proc.log()}")


def test_dev_loop_rebuilds_and_survives_a_broken_build(
    tmp_path: Path, start_dev: Callable[[Path], Proc]
) -> None:
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLES / "c" / "hello", project, ignore=shutil.ignore_patterns("build"))
    source = project / "main.c"
    dev = start_dev(project)
    assert "serving" in dev.log() and dev.url in dev.log()
    assert httpx.get(dev.url).text == "Hello from C!\n"

    source.write_text(source.read_text().replace("Hello from C!", "Hello again!"))
    wait_for(lambda: httpx.get(dev.url).text == "Hello again!\n", 120, dev, "rebuild")

    good = source.read_text()
    source.write_text(good.replace("void edge_handle", "this is not C; void edge_handle"))
    wait_for(lambda: "build failed" in dev.log(), 120, dev, "failed build report")
    assert "error" in dev.log().split("build failed", 1)[1]  # the compiler's message is shown
    assert "still serving the last good build" in dev.log()
    for _ in range(5):
        assert httpx.get(dev.url).text == "Hello again!\n"

    source.write_text(good.replace("Hello again!", "Fixed!"))
    wait_for(lambda: httpx.get(dev.url).text == "Fixed!\n", 120, dev, "rebuild after fix")


def test_dev_serves_compiler_error_before_first_good_build(
    tmp_path: Path, start_dev: Callable[[Path], Proc]
) -> None:
    project = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "c" / "hello", project, ignore=shutil.ignore_patterns("build"))
    (project / "main.c").write_text("this does not compile\n")
    dev = start_dev(project)
    r = httpx.get(dev.url)
    assert r.status_code == 500 and r.json()["error"] == "build_failed"
    assert "error" in r.json()["compiler_output"].lower()


def test_dev_compiles_with_winch_and_serves_python_edits(
    tmp_path: Path, start_dev: Callable[[Path], Proc]
) -> None:
    project = tmp_path / "hello-py"
    shutil.copytree(EXAMPLES / "python" / "hello", project, ignore=shutil.ignore_patterns("build"))
    dev = start_dev(project)
    assert "compiled with winch" in dev.log()
    assert httpx.get(dev.url).text == "Hello from Python!\n"
    source = project / "app.py"
    source.write_text(source.read_text().replace("Hello from Python!", "Hello, Winch!"))
    wait_for(lambda: httpx.get(dev.url).text == "Hello, Winch!\n", 180, dev, "rebuild")
    # The compiled artifact is cached under the Winch fingerprint, beside the project.
    assert any((project / "build" / "compiled").glob("*.cwasm"))
