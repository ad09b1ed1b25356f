"""edge.cli_output in process (what goes to which stream) and the region ramp wait (pure)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import typer

from edge.cli_output import Output, error_json, human_bytes, run_app
from edge.control.client import ramp_progress, wait_for_region
from edge.control.errors import NotFound
from edge.errors import BuildFailed, ConfigError


def test_json_result_and_error_go_to_stdout_diagnostics_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = Output(True)
    with out.spinner("working") as step, out.progress("bar") as bar:
        step("a step")
        bar.update(1, 2, "half")  # not a terminal: nothing drawn
    out.say("progress in words")
    out.note("warning: a diagnostic")
    out.result({"answer": 42}, "people only")
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"answer": 42}
    assert captured.err == "warning: a diagnostic\n"

    with pytest.raises(typer.Exit) as exited, Output(True):
        raise ConfigError("edge.toml: bad")
    assert exited.value.exit_code == 1
    assert json.loads(capsys.readouterr().out) == {
        "error": {"type": "config_error", "message": "edge.toml: bad"}
    }


def test_people_get_sentences_and_errors_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    out = Output()
    out.say("building")
    out.result({"answer": 42}, "the answer is 42")
    with pytest.raises(typer.Exit), out:
        raise BuildFailed("zig cc failed", "main.c:1: error: nope\n")
    captured = capsys.readouterr()
    assert captured.out == "the answer is 42\n"
    assert captured.err == "building\nerror: zig cc failed\nmain.c:1: error: nope\n"


def test_failure_keeps_what_was_done_and_events_are_one_line_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = Output(True)
    out.event("ready", "people see this", url="http://127.0.0.1:1/")
    with pytest.raises(typer.Exit):
        out.fail(NotFound("gone"), done={"revision": 7})
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"event": "ready", "url": "http://127.0.0.1:1/"},
        {"revision": 7, "error": {"type": "not_found", "message": "gone"}},
    ]
    assert error_json(BuildFailed("x", "out")) == {"type": "build_failed", "message": "x",
                                                   "output": "out"}
    assert [human_bytes(n) for n in (12, 3714, 19 * 1024 * 1024)] == [
        "12 bytes", "3.6 KiB", "19.0 MiB"
    ]


def test_run_app_turns_usage_errors_and_crashes_into_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = typer.Typer()

    @app.command()
    def boom(count: int, as_json: bool = typer.Option(False, "--json")) -> None:
        raise RuntimeError(f"bug {count}")

    @app.command()
    def forgetful(as_json: bool = typer.Option(False, "--json")) -> None:
        raise NotFound("no such thing")  # not inside `with Output(...)`

    with pytest.raises(SystemExit) as usage:
        run_app(app, ["boom", "many", "--json"])
    assert usage.value.code == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "usage_error" and "'count'" in error["message"]

    with pytest.raises(SystemExit) as crash:
        run_app(app, ["boom", "3", "--json"])
    assert crash.value.code == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"] == {
        "type": "internal_error", "message": "internal error: RuntimeError('bug 3')"
    }
    assert "Traceback" in captured.err  # the bug is still reported in full

    for args, stdout, stderr in ((["forgetful"], "", "error: no such thing\n"),
                                 (["forgetful", "--json"],
                                  '{"error": {"message": "no such thing", "type": "not_found"}}\n',
                                  "")):
        with pytest.raises(SystemExit) as exited:
            run_app(app, args)
        assert exited.value.code == 1
        assert capsys.readouterr() == (stdout, stderr)


def listing(*regions: dict[str, Any], now: float = 100.0) -> dict[str, Any]:
    return {"now_unix": now, "regions": list(regions)}


def eu(state: str, share: float, direction: str = "drain") -> dict[str, Any]:
    drain = {"direction": direction, "started_unix": 90.0, "over_s": 20.0, "from_share": 1.0}
    return {"name": "eu-west", "state": state, "share": share, "drain": drain}


def test_wait_for_region_follows_the_ramp_until_it_ends() -> None:
    answers: Iterator[dict[str, Any]] = iter([
        listing(eu("draining", 0.5), now=100.0),
        listing(eu("draining", 0.25), now=105.0),
        listing(eu("drained", 0.0), now=110.0),
    ])
    seen: list[tuple[float, float]] = []
    sleeps: list[float] = []
    final = wait_for_region(lambda: next(answers), "eu-west", "drain",
                            on_progress=lambda r, left: seen.append((ramp_progress(r), left)),
                            sleep=sleeps.append)
    assert final["state"] == "drained"
    assert seen == [(0.5, 10.0), (0.75, 5.0), (1.0, 0.0)]
    assert sleeps == [0.5, 0.5]


def test_wait_for_region_stops_when_another_change_takes_over() -> None:
    answers = iter([listing(eu("draining", 0.5)), listing(eu("undraining", 0.6, "undrain"))])
    final = wait_for_region(lambda: next(answers), "eu-west", "drain", sleep=lambda _: None)
    assert final["state"] == "undraining"
    assert ramp_progress({"name": "x", "state": "active", "share": 1.0, "drain": None}) == 1.0
    with pytest.raises(NotFound, match="no region 'eu-west'"):
        wait_for_region(lambda: listing(), "eu-west", "drain", sleep=lambda _: None)
