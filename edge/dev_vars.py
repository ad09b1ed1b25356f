"""`edge dev`'s local config values: `--var KEY=VALUE` and the project's `.dev.vars` file.

They overlay edge.toml's [config] in `edge dev` as deploy-time values (edge.control.values) do
on a node, through the same `Served.values`, and obey the same key and value rules, so what
works locally can be given to `edge config set` unchanged. The file is where a developer keeps
secrets out of edge.toml: `edge new` git-ignores it and builds never read it. --var wins over
the file.

The file, one assignment a line (a plain subset of dotenv, as Wrangler's `.dev.vars`):

    # a comment: a line whose first non-blank character is '#'
    API_TOKEN=sk_test_123#x
    greeting = "  Hello, world "

Whitespace around the key and the value is dropped; a value in matching quotes ('' or "") is
what is between them, spaces included, taken literally. A '#' after the '=' is part of the
value (secrets contain them); there are no escapes, no `export`, no `${...}` and no multi-line
values. A key may be set once. Errors name the file and line and never repeat a value: it may
be a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge.control.values import check_count, check_key, check_value, parse_assignments
from edge.errors import BadRequest, ConfigError, UsageError

DEV_VARS_FILE = ".dev.vars"
_BLANK = " \t\r"  # str.strip() would also eat U+2028 and friends, which a value may hold


def parse_dev_vars(text: str, origin: str) -> dict[str, str]:
    """`.dev.vars` text → {KEY: VALUE}; raises ConfigError naming `origin` and the line."""
    values: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip(_BLANK)
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{origin} line {number}"
        key, eq, raw = stripped.partition("=")
        key = key.strip(_BLANK)
        if not eq or not key:
            raise ConfigError(f"{where}: expected KEY=VALUE")
        try:
            value = check_value(check_key(key), _unquoted(raw.strip(_BLANK), where))
        except BadRequest as e:
            raise ConfigError(f"{where}: {e.message}") from None
        if key in first_line:
            raise ConfigError(f"{where}: {key!r} is set again (first on line {first_line[key]})")
        values[key], first_line[key] = value, number
    return values


def _unquoted(raw: str, where: str) -> str:
    quote = raw[:1]
    if quote not in ("'", '"'):
        return raw
    if len(raw) < 2 or not raw.endswith(quote):
        raise ConfigError(f"{where}: the value's opening {quote} is not closed at the line's end")
    return raw[1:-1]


def read_dev_vars(project: Path) -> dict[str, str]:
    """The project's `.dev.vars`, or nothing when there is none."""
    path = project / DEV_VARS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # an editor's byte-order mark is not part of a key
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text") from None
    return parse_dev_vars(text, str(path))


def parse_var_options(pairs: list[str]) -> dict[str, str]:
    """`--var KEY=VALUE` options, by the control plane's rules; a bad one is a UsageError."""
    values = parse_assignments(pairs)
    try:
        for key, value in values.items():
            check_value(check_key(key), value)
    except BadRequest as e:
        raise UsageError(f"--var: {e.message}") from None
    return values


@dataclass(frozen=True)
class DevValues:
    """What `edge dev` lays over edge.toml's [config]: the file's values, then the options'."""

    from_file: Mapping[str, str] = field(default_factory=dict)
    from_options: Mapping[str, str] = field(default_factory=dict)

    @property
    def merged(self) -> dict[str, str]:
        return {**self.from_file, **self.from_options}

    def describe(self) -> str:
        """Names and where each comes from, never a value."""
        keys = [f"{k} (--var)" for k in sorted(self.from_options)]
        keys += [f"{k} ({DEV_VARS_FILE})" for k in sorted(self.from_file)
                 if k not in self.from_options]  # fmt: skip
        return ", ".join(keys) if keys else "none"


def load_dev_values(project: Path, from_options: Mapping[str, str]) -> DevValues:
    values = DevValues(read_dev_vars(project), from_options)
    try:
        check_count(len(values.merged))
    except BadRequest as e:
        raise ConfigError(f"{project / DEV_VARS_FILE} and --var: {e.message}") from None
    return values
