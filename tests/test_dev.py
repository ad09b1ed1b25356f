"""`edge dev` as a real process: serves, rebuilds on save, keeps the last good build on errors."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from watchfiles import Change

from edge.dev import _sorted_changes

from .conftest import EXAMPLES, FIXTURES, REPO, Proc, free_port

pytestmark = pytest.mark.toolchain


def copied(source: Path, project: Path) -> Path:
    """A function project to edit: `source` copied to `project`, without its build output."""
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("build"))
    return project


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
    project = copied(EXAMPLES / "c" / "hello", tmp_path / "hello")
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
    project = copied(EXAMPLES / "c" / "hello", tmp_path / "broken")
    (project / "main.c").write_text("this does not compile\n")
    dev = start_dev(project)
    r = httpx.get(dev.url)
    assert r.status_code == 500 and r.json()["error"] == "build_failed"
    assert "error" in r.json()["compiler_output"].lower()
    assert "function_log" not in r.json()  # a build failure is not the function's doing


def test_dev_compiles_with_winch_and_serves_python_edits(
    tmp_path: Path, start_dev: Callable[[Path], Proc]
) -> None:
    project = copied(EXAMPLES / "python" / "hello", tmp_path / "hello-py")
    dev = start_dev(project)
    assert "compiled with winch" in dev.log()
    assert httpx.get(dev.url).text == "Hello from Python!\n"
    source = project / "app.py"
    source.write_text(source.read_text().replace("Hello from Python!", "Hello, Winch!"))
    wait_for(lambda: httpx.get(dev.url).text == "Hello, Winch!\n", 180, dev, "rebuild")
    # The compiled artifact is cached under the Winch fingerprint, beside the project.
    assert any((project / "build" / "compiled").glob("*.cwasm"))


def logged_line(dev: Proc, ending: str) -> str:
    wait_for(lambda: ending in dev.log(), 10, dev, f"a line ending {ending}")
    return next(line for line in dev.log().splitlines() if line.endswith(ending))


def test_dev_prints_a_line_per_request(tmp_path: Path, start_dev: Callable[[Path], Proc]) -> None:
    project = copied(EXAMPLES / "c" / "hello", tmp_path / "hello")
    dev = start_dev(project)
    for method in ["GET", "POST"]:
        request_id = f"dev-{method.lower()}"
        r = httpx.request(method, dev.url + "/some/path?x=1&y=%C3%A9",
                          headers={"x-request-id": request_id}, content=b"body")  # fmt: skip
        assert r.status_code == 200
        line = logged_line(dev, f"[{request_id}]")
        expected = rf"\d\d:\d\d:\d\d {method} /some/path\?x=1&y=%C3%A9 200 \d+\.\d ms"
        assert re.fullmatch(rf"{expected} \[{request_id}\]", line), line
    assert "epoch ticker" not in dev.log()  # the native ones: nothing to say
    assert "native invoke" not in dev.log()


def test_dev_says_when_it_falls_back_to_the_python_ticker_as_a_node_does(
    tmp_path: Path, start_dev: Callable[..., Proc]
) -> None:
    """`edge node` said so and `edge dev` did not: a developer saw nothing of it."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the helper's cache dir cannot be made under a file
    project = copied(FIXTURES / "functions" / "loop", tmp_path / "loop")
    dev = start_dev(project, env={"EDGE_NATIVE_DIR": str(blocked / "native")})
    said = [line for line in dev.log().splitlines() if "epoch ticker" in line]
    assert len(said) == 1, dev.log()
    assert said[0].startswith("edge dev: epoch ticker: python, native ticker unavailable (")
    assert "Not a directory" in said[0]
    invoke = [line for line in dev.log().splitlines() if "native invoke" in line]
    assert len(invoke) == 1 and invoke[0].startswith("edge dev: invoke: python, native invoke")
    r = httpx.get(dev.url, timeout=30)  # deadlines still hold
    assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"


def test_dev_puts_the_functions_own_lines_in_its_error_answer(
    tmp_path: Path, start_dev: Callable[[Path], Proc]
) -> None:
    project = copied(FIXTURES / "functions" / "uncaught-py", tmp_path / "uncaught")
    dev = start_dev(project)
    r = httpx.get(dev.url, headers={"x-request-id": "dev-raise"}, timeout=30)
    assert r.status_code == 500
    doc = r.json()
    assert (doc["error"], doc["request_id"]) == ("function_exception", "dev-raise")
    log = doc["function_log"]
    assert log[:2] == ["printed in three pieces", "no newline at the end"]
    # The traceback is one entry of it (at level error), not one per line.
    assert len(log) == 3 and log[2].startswith("error Traceback (most recent call last):\n")
    assert log[2].endswith("\nValueError: boom from python")
    assert r.headers["content-length"] == str(len(r.content))
    ok = httpx.get(dev.url + "/ok", headers={"x-request-id": "dev-ok"})
    assert ok.status_code == 200 and ok.text == "ok\n"
    # Its own request's lines only, not the ones of the requests before it.
    other = httpx.get(dev.url, headers={"x-request-id": "dev-raise-2"}, timeout=30).json()
    assert other["function_log"] == log


@pytest.mark.parametrize(
    ("fixture", "said", "last"),
    [
        ("uncaught-py", "app.PaymentDeclined: card declined for api_key=sk_live_py_SECRET_4242",
         "app.PaymentDeclined: card declined for api_key=sk_live_py_SECRET_4242"),
        ("uncaught-js", "PaymentDeclined: api_key=sk_live_js_SECRET_4242", "    at "),
    ],
)  # fmt: skip
def test_dev_shows_an_uncaught_exceptions_message_and_traceback(
    tmp_path: Path, start_dev: Callable[[Path], Proc], fixture: str, said: str, last: str
) -> None:
    # What a node keeps from its clients (tests/test_sdk.py), the developer sees.
    dev = start_dev(copied(FIXTURES / "functions" / fixture, tmp_path / fixture))
    r = httpx.get(dev.url + "/secret", headers={"x-request-id": "dev-secret"}, timeout=30)
    assert r.status_code == 500
    doc = r.json()
    assert doc["error"] == "function_exception"
    assert doc["message"] == f"function raised an uncaught exception: {said}"
    tail = doc["traceback"]
    assert 1 <= len(tail) <= 6 and tail[-1].startswith(last)
    # The whole traceback is in function_log, as the one entry the node logged.
    entry = next(line for line in doc["function_log"] if line.startswith("error "))
    assert entry.endswith("\n".join(tail)) and said.split(": ")[1] in entry
    assert r.headers["content-length"] == str(len(r.content))


def test_dev_leaves_a_functions_own_5xx_alone(
    tmp_path: Path, start_dev: Callable[[Path], Proc]
) -> None:
    project = copied(FIXTURES / "functions" / "status", tmp_path / "status")
    dev = start_dev(project)
    for status in [500, 503]:
        r = httpx.get(dev.url, headers={"x-status": str(status)})
        assert (r.status_code, r.content) == (status, b"body\n")
        assert r.headers["content-length"] == "5"


def test_dev_has_geo_for_a_forwarded_client(
    tmp_path: Path, start_dev: Callable[[Path], Proc]
) -> None:
    project = copied(EXAMPLES / "c" / "echo", tmp_path / "echo")
    dev = start_dev(project)
    local = httpx.get(dev.url).json()
    assert local["client_ip"] == "127.0.0.1" and local["geo"]["country"] is None
    london = httpx.get(dev.url, headers={"x-forwarded-for": "81.2.69.142"}).json()
    assert london["client_ip"] == "81.2.69.142"
    assert (london["geo"]["country"], london["geo"]["continent"]) == ("GB", "EU")
    assert london["region"] == "local"


def test_dev_serves_new_config_values_on_save(
    tmp_path: Path, start_dev: Callable[[Path], Proc]
) -> None:
    project = copied(EXAMPLES / "c" / "config", tmp_path / "config")
    dev = start_dev(project)
    assert httpx.get(dev.url).text == "Hello from C config!\n"
    manifest = project / "edge.toml"
    manifest.write_text(manifest.read_text().replace("Hello from C config!", "Saved greeting"))
    wait_for(lambda: httpx.get(dev.url).text == "Saved greeting\n", 60, dev, "new config value")


def test_dev_keeps_only_the_newest_compiled_code(
    tmp_path: Path, start_dev: Callable[[Path], Proc]
) -> None:
    from edge.dev import DEV_KEEP_COMPILED

    project = copied(EXAMPLES / "c" / "hello", tmp_path / "hello")
    source = project / "main.c"
    original = source.read_text()
    dev = start_dev(project)
    compiled = project / "build" / "compiled"
    for text in [f"Save {n}" for n in range(DEV_KEEP_COMPILED + 3)]:
        source.write_text(original.replace("Hello from C!", text))
        served = functools.partial(lambda text: httpx.get(dev.url).text == f"{text}\n", text)
        wait_for(served, 60, dev, text)
    assert len(list(compiled.glob("*.cwasm"))) == DEV_KEEP_COMPILED
    # Back to an older save: its code is served, mapped again or compiled again.
    source.write_text(original)
    wait_for(lambda: httpx.get(dev.url).text == "Hello from C!\n", 60, dev, "undo")
    assert len(list(compiled.glob("*.cwasm"))) == DEV_KEEP_COMPILED
    assert len(list(compiled.glob("*.lock"))) <= DEV_KEEP_COMPILED


SECRET = "sk_dev_SECRET_4242"


def test_dev_lays_dev_vars_over_edge_toml_and_rereads_them_without_a_rebuild(
    tmp_path: Path, start_dev: Callable[..., Proc]
) -> None:
    project = copied(EXAMPLES / "c" / "config", tmp_path / "config")
    dev_vars = project / ".dev.vars"
    dev_vars.write_text(f'# local only\n\ngreeting = "  {SECRET} from the file"\n')
    dev = start_dev(project)
    assert "config values over edge.toml: greeting (.dev.vars)" in dev.log()
    assert httpx.get(dev.url).text == f"  {SECRET} from the file\n"
    builds = dev.log().count("edge dev: built")

    dev_vars.write_text(f"greeting={SECRET} saved\n")
    wait_for(lambda: httpx.get(dev.url).text == f"{SECRET} saved\n", 30, dev, "new value")
    assert ".dev.vars read again" in dev.log()
    # Saved as many editors save: a temporary file renamed over it, after a probe file made
    # and deleted at once (vim's 4913). The values are read again; nothing is rebuilt.
    probe, temporary = project / "4913", project / ".dev.vars.tmp"
    probe.write_text("")
    probe.unlink()
    temporary.write_text(f"greeting={SECRET} renamed\n")
    os.replace(temporary, dev_vars)
    wait_for(lambda: httpx.get(dev.url).text == f"{SECRET} renamed\n", 30, dev, "renamed")
    # A bad line: reported by file and line, and the values before it stay.
    dev_vars.write_text(f"greeting=ok\n{SECRET}\n")
    wait_for(lambda: "still serving the config values before it" in dev.log(), 30, dev, "report")
    assert f"{dev_vars} line 2: expected KEY=VALUE" in dev.log()
    assert httpx.get(dev.url).text == f"{SECRET} renamed\n"
    dev_vars.unlink()  # edge.toml's value again
    wait_for(lambda: httpx.get(dev.url).text == "Hello from C config!\n", 30, dev, "toml value")
    assert "config values over edge.toml: none" in dev.log()

    log = dev.log()
    assert log.count("edge dev: built") == builds and "rebuilding" not in log
    assert "Traceback" not in log
    # Neither the request lines nor any other line of edge dev's shows a value.
    assert re.search(r"GET / 200 \d+\.\d ms", log) and SECRET not in log


def test_dev_var_options_win_over_dev_vars(
    tmp_path: Path, start_dev: Callable[..., Proc]
) -> None:
    project = copied(EXAMPLES / "c" / "config", tmp_path / "config")
    (project / ".dev.vars").write_text("greeting=from the file\n")
    dev = start_dev(project, "--var", f"greeting={SECRET}", "--var", "other=x=y")
    assert "greeting (--var), other (--var)" in dev.log()
    assert httpx.get(dev.url).text == f"{SECRET}\n"
    (project / ".dev.vars").write_text("greeting=changed file\n")
    wait_for(lambda: dev.log().count("config values over edge.toml") == 2, 30, dev, "reread")
    assert httpx.get(dev.url).text == f"{SECRET}\n"
    # An error answer (the node's, here a 413) carries no value either.
    big = httpx.post(dev.url, content=b"x" * (10 * 1024 * 1024 + 1))
    assert big.status_code == 413 and SECRET not in big.text
    assert SECRET not in dev.log()


def edge_dev_failing(project: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "dev", str(project), "--port", str(free_port()), *options],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip


def test_dev_refuses_a_malformed_dev_vars_or_var(tmp_path: Path) -> None:
    project = copied(EXAMPLES / "c" / "config", tmp_path / "config")
    (project / ".dev.vars").write_text(f"# ok\ngreeting=hi\nnot an assignment {SECRET}\n")
    bad_file = edge_dev_failing(project)
    assert bad_file.returncode == 1, bad_file.stderr
    dev_vars = (project / ".dev.vars").resolve()
    assert bad_file.stderr == f"error: {dev_vars} line 3: expected KEY=VALUE\n"

    (project / ".dev.vars").write_text("greeting=hi\n")
    bad_key = edge_dev_failing(project, "--var", f"1bad={SECRET}")
    assert bad_key.returncode == 2
    assert bad_key.stderr.startswith("error: --var: bad config key '1bad'")
    no_key = edge_dev_failing(project, "--var", SECRET)
    assert no_key.returncode == 2 and "argument 1 has no KEY=" in no_key.stderr
    assert all(SECRET not in r.stderr + r.stdout for r in (bad_file, bad_key, no_key))


def test_changes_sort_into_values_and_sources(tmp_path: Path) -> None:
    (tmp_path / ".dev.vars").write_text("")
    (tmp_path / "main.c").write_text("")

    def batch(*changes: tuple[Change, str]) -> tuple[bool, bool]:
        return _sorted_changes({(c, str(tmp_path / name)) for c, name in changes})

    renamed = batch((Change.added, ".dev.vars.tmp"), (Change.deleted, ".dev.vars.tmp"),
                    (Change.added, ".dev.vars"))  # fmt: skip
    assert renamed == (True, False)
    assert batch((Change.added, "4913"), (Change.deleted, "4913")) == (False, False)
    assert batch((Change.modified, "main.c")) == (False, True)
    assert batch((Change.deleted, "gone.c")) == (False, True)  # a source removed: rebuilt
    assert batch((Change.deleted, ".dev.vars")) == (True, False)
    assert batch((Change.modified, ".dev.vars"), (Change.modified, "main.c")) == (True, True)


def test_dev_watches_the_project_before_it_says_it_is_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ready line came before watchfiles had registered its watches when the scheduler ran
    the watcher task late (seen beside a CPU hog): a save made right after it was lost. The
    order is the event loop's, so it is checked in process: watchfiles' own RustNotify is
    wrapped to say when it has registered, and Hypercorn is replaced by a stand-in that says
    the ready line at once and returns."""
    import asyncio

    import watchfiles.main

    from edge import dev
    from edge.cli_output import Output

    said: list[str] = []

    real = watchfiles.main.RustNotify  # type: ignore[attr-defined]

    def registered(*args: Any, **kwargs: Any) -> Any:
        notify = real(*args, **kwargs)  # its watches are registered once it is made
        said.append("watching")
        return notify

    async def ready_at_once(app: object, listen: str, on_ready: Callable[[], object]) -> None:
        await on_ready()  # type: ignore[misc]

    monkeypatch.setattr(watchfiles.main, "RustNotify", registered)
    monkeypatch.setattr(dev, "run", ready_at_once)
    server = dev.DevServer(copied(EXAMPLES / "c" / "hello", tmp_path / "hello"), "127.0.0.1",
                           free_port(), Output())
    monkeypatch.setattr(server.out, "event", lambda kind, *_a, **_k: said.append(kind))
    asyncio.run(server.serve())
    assert said[-2:] == ["watching", "ready"], said
