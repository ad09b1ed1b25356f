"""How every `edge` command talks to people and to scripts, in one place.

People (the default): results on stdout (a sentence, a table, a one-line summary); progress bars,
spinners and diagnostics on stderr, drawn by rich.

Scripts (`--json`): stdout carries JSON and nothing else. A command prints one document; a
server (`edge node`, `control`, `dns`, `dev`, `up`) prints one event object per line
(`{"event": "ready", "url": ...}`). A failure is `{"error": {"type", "message"}}` on stdout with
a non-zero exit code. Progress is drawn on stderr only when stderr is a terminal, so a script
capturing both streams gets no spinner frames; diagnostics stay on stderr as text.

Usage in a command:

    def thing(name: str, as_json: JsonOption = False) -> None:
        with Output(as_json) as out:          # an EdgeError inside becomes the error output
            with out.spinner("asking") as step:
                result = do_it(name, on_step=step)
            out.result(result, f"{name}: done")  # the JSON document, or the sentence
                                                 # (or a function printing a table: out.show)

A follower (`--follow`) or server prints `out.event("line", human_text, **fields)` per item;
a long wait uses `with out.progress("what") as bar: bar.update(done, total, "detail")`;
warnings go through `out.note`. Never print to stdout directly.
"""

from __future__ import annotations

import datetime
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Annotated, Any, NoReturn, TextIO

import typer
from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from typer.exceptions import TyperException

from edge.errors import BuildFailed, EdgeError, UsageError

JsonOption = Annotated[
    bool, typer.Option("--json", help="machine-readable JSON on stdout (progress: stderr)")
]

EXIT_FAILED = 1
EXIT_USAGE = 2


def error_json(error: EdgeError) -> dict[str, Any]:
    """The `error` object of a failed command: `type` is the error's stable reason code."""
    body: dict[str, Any] = {"type": error.reason, "message": error.message}
    if isinstance(error, BuildFailed) and error.output:
        body["output"] = error.output
    return body


class Bar:
    """One progress bar; `update` is all a long operation needs to know about the terminal."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task

    def update(self, completed: float, total: float, detail: str = "") -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, total=total, detail=detail)


class Output:
    def __init__(self, as_json: bool = False) -> None:
        self.json = as_json
        self._lines = False  # a server's events: one compact object per line

    # Streams are looked up at each use: test runners swap sys.stdout around a command.
    @property
    def stdout(self) -> TextIO:
        return sys.stdout

    @property
    def stderr(self) -> TextIO:
        return sys.stderr

    @property
    def draws_progress(self) -> bool:
        """Bars and spinners: always for people; for scripts only on an interactive stderr."""
        return not self.json or self.stderr.isatty()

    def _err_console(self) -> Console:
        return Console(file=self.stderr)

    # --- errors ---------------------------------------------------------------------------

    def __enter__(self) -> Output:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(e, EdgeError):
            self.fail(e, EXIT_USAGE if isinstance(e, UsageError) else EXIT_FAILED)

    def fail(
        self, error: EdgeError, code: int = EXIT_FAILED, done: dict[str, Any] | None = None
    ) -> NoReturn:
        """Ends the command. `done`: what happened before the failure, kept next to `error` in
        the JSON (a deploy that did not converge still made its revision)."""
        if self.json:
            self._write_json({**(done or {}), "error": error_json(error)})
        else:
            print(f"error: {error.message}", file=self.stderr, flush=True)
            if isinstance(error, BuildFailed) and error.output:
                print(error.output.rstrip(), file=self.stderr, flush=True)
        raise typer.Exit(code)

    # --- results --------------------------------------------------------------------------

    def result(self, value: Any, human: str | Callable[[], None] | None = None) -> None:
        """The command's answer: `value` as JSON, or `human` (a line, or a function that prints)."""
        if self.json:
            self._write_json(value)
        elif callable(human):
            human()
        elif human is not None:
            print(human, file=self.stdout, flush=True)

    def show(self, renderable: RenderableType) -> None:
        """A rich table or text as the command's human output (stdout)."""
        Console(file=self.stdout).print(renderable)

    def note(self, message: str) -> None:
        """A diagnostic (warning, hint): stderr in both modes, never mixed into the result."""
        print(message, file=self.stderr, flush=True)

    def say(self, message: str) -> None:
        """Progress told in words (stderr): shown wherever bars would be drawn."""
        if self.draws_progress:
            print(message, file=self.stderr, flush=True)

    def _write_json(self, value: Any) -> None:
        # One line for pipes (a server's events are JSON lines); indented for a person's terminal.
        indent = 2 if self.stdout.isatty() and not self._lines else None
        print(json.dumps(value, indent=indent, sort_keys=True), file=self.stdout, flush=True)

    # --- servers --------------------------------------------------------------------------

    def event(self, name: str, human: str, **fields: Any) -> None:
        """A server's news: a JSON line `{"event": name, **fields}` on stdout, or `human` on
        stderr (where a server's talk always went, so stdout stays free for requests' output)."""
        if self.json:
            self._lines = True
            self._write_json({"event": name, **fields})
        else:
            print(human, file=self.stderr, flush=True)

    # --- progress -------------------------------------------------------------------------

    @contextmanager
    def spinner(self, text: str) -> Iterator[Callable[[str], None]]:
        """A spinner showing `text`; the yielded function changes the text (the current step)."""
        if not self.draws_progress:
            yield lambda _text: None
            return
        with self._err_console().status(text) as status:
            yield lambda step: status.update(f"{text}: {step}")

    @contextmanager
    def progress(self, description: str) -> Iterator[Bar]:
        """A bar on stderr; the caller sets completed/total and a detail line as it learns them."""
        if not self.draws_progress:
            yield Bar(None, None)
            return
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self._err_console(),
        ) as progress:
            yield Bar(progress, progress.add_task(description, total=None, detail=""))


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def utc_time(unix: float | None) -> str:
    """A time in a table: UTC to the second ("-": never)."""
    if unix is None:
        return "-"
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _fail_code(out: Output, error: EdgeError, code: int) -> int:
    try:
        out.fail(error, code)
    except typer.Exit as done:
        return done.exit_code


def run_app(app: typer.Typer, argv: list[str]) -> NoReturn:
    """Runs the CLI. An EdgeError a command lets out still gets the right output; with --json
    anywhere in `argv`, usage errors and crashes are JSON too."""
    as_json = "--json" in argv
    out = Output(as_json)
    try:
        # Standalone, typer prints usage errors itself and exits; otherwise they come here.
        code = app(args=argv, standalone_mode=not as_json)
    except EdgeError as e:
        code = _fail_code(out, e, EXIT_USAGE if isinstance(e, UsageError) else EXIT_FAILED)
    except typer.Abort:
        code = EXIT_FAILED
    except TyperException as e:  # a missing argument, a bad option value
        code = _fail_code(out, UsageError(e.format_message()), EXIT_USAGE)
    except Exception as e:
        if not as_json:
            raise
        traceback.print_exc(file=sys.stderr)  # a bug of ours: still an answer a script parses
        code = _fail_code(out, EdgeError(f"internal error: {e!r}"), EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else 0)
