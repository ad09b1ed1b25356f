"""`edge dev`'s local config values (edge.dev_vars): the .dev.vars parser and --var, in process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edge.build.cache import cache_key
from edge.control.values import KEY_RE, MAX_KEYS, MAX_VALUE_BYTES
from edge.dev_vars import (
    DEV_VARS_FILE,
    DevValues,
    load_dev_values,
    parse_dev_vars,
    parse_var_options,
    read_dev_vars,
)
from edge.errors import ConfigError, UsageError

from .conftest import EXAMPLES

SECRET = "sk_dev_SECRET_4242"


def test_parses_assignments_comments_blanks_and_quotes() -> None:
    text = (
        "# local secrets\n"
        "\n"
        "API_TOKEN=sk_test_1#2=3\n"          # '#' and '=' after the first '=' are the value's
        "  greeting =  Hello, world  \n"     # blanks around key and value dropped
        "padded=\"  kept  \"\r\n"            # quotes keep them; a CRLF file reads the same
        "single='say \"hi\"'\n"
        "   # an indented comment\n"
        "empty=\n"
        "db.url-2=''\n"
        "quote_inside='it's'\n"               # only the outer pair is removed
    )  # fmt: skip
    assert parse_dev_vars(text, ".dev.vars") == {
        "API_TOKEN": "sk_test_1#2=3",
        "greeting": "Hello, world",
        "padded": "  kept  ",
        "single": 'say "hi"',
        "empty": "",
        "db.url-2": "",
        "quote_inside": "it's",
    }
    assert parse_dev_vars("", "f") == {} and parse_dev_vars("\n# only\n\n", "f") == {}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (f"ok=1\n\n{SECRET}\n", r"^p/\.dev\.vars line 3: expected KEY=VALUE$"),
        (f"=  {SECRET}\n", r"^p/\.dev\.vars line 1: expected KEY=VALUE$"),
        (f"# c\n1KEY={SECRET}\n", r"^p/\.dev\.vars line 2: bad config key '1KEY': 1-128 letters"),
        (f"my key={SECRET}\n", r"line 1: bad config key 'my key'"),
        (f"k=\"{SECRET}\n", r"^p/\.dev\.vars line 1: the value's opening \" is not closed"),
        (f"k='{SECRET}\"\n", r"line 1: the value's opening ' is not closed"),
        ("k='\n", r"line 1: the value's opening ' is not closed"),
        (f"a=1\nk={SECRET}\nk=2\n", r"^p/\.dev\.vars line 3: 'k' is set again \(first on line 2\)"),
        (f"big={'x' * (MAX_VALUE_BYTES + 1)}\n",
         rf"line 1: config value of 'big' is {MAX_VALUE_BYTES + 1} bytes; at most"),
    ],
)  # fmt: skip
def test_a_bad_line_names_file_and_line_and_never_the_value(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error) as info:
        parse_dev_vars(text, "p/.dev.vars")
    assert SECRET not in info.value.message


def test_the_control_planes_key_and_size_rules_apply() -> None:
    longest = "k" + "x" * 127
    assert parse_dev_vars(f"{longest}=v\nbig={'y' * MAX_VALUE_BYTES}", "f")[longest] == "v"
    with pytest.raises(ConfigError, match="bad config key"):
        parse_dev_vars(f"{longest}x=v", "f")


@given(st.text(max_size=300))
@example("k=\"\u2028\"")
@example("\ufeffk=v")
@example("k\x00=v")
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        values = parse_dev_vars(text, "f")
    except ConfigError:
        return
    assert all(KEY_RE.fullmatch(k) for k in values)


@given(
    # Any text a UTF-8 file can hold on one line: not a lone surrogate.
    st.dictionaries(st.from_regex(KEY_RE, fullmatch=True),
                    st.text(st.characters(exclude_characters="\n", exclude_categories=("Cs",)),
                            max_size=40), max_size=8),
    st.sampled_from(["'", '"']),
)  # fmt: skip
def test_a_quoted_value_reads_back_exactly(values: dict[str, str], quote: str) -> None:
    text = "".join(f"{k} = {quote}{v}{quote}\n" for k, v in values.items())
    assert parse_dev_vars(text, "f") == values


def test_reads_the_projects_file(tmp_path: Path) -> None:
    assert read_dev_vars(tmp_path) == {}  # none: nothing over edge.toml
    (tmp_path / DEV_VARS_FILE).write_bytes(b"\xef\xbb\xbfKEY=v\xc3\xa9\n")  # a BOM, UTF-8
    assert read_dev_vars(tmp_path) == {"KEY": "v\u00e9"}
    (tmp_path / DEV_VARS_FILE).write_bytes(b"a=1\nb=\xff\xfe\n")
    with pytest.raises(ConfigError, match=rf"{DEV_VARS_FILE} line 2: not UTF-8 text$"):
        read_dev_vars(tmp_path)
    (tmp_path / DEV_VARS_FILE).unlink()
    (tmp_path / DEV_VARS_FILE).mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        read_dev_vars(tmp_path)


def test_var_options_follow_the_control_planes_rules() -> None:
    assert parse_var_options(["a=1", "url=x=y", "a=2"]) == {"a": "2", "url": "x=y"}
    assert parse_var_options([]) == {}
    with pytest.raises(UsageError, match=r"^--var: bad config key '9x'") as info:
        parse_var_options([f"9x={SECRET}"])
    assert SECRET not in info.value.message
    with pytest.raises(UsageError, match="argument 2 has no KEY=") as info:
        parse_var_options(["a=1", SECRET])
    assert SECRET not in info.value.message
    with pytest.raises(UsageError, match="--var: config value of 'k' is"):
        parse_var_options([f"k={'z' * (MAX_VALUE_BYTES + 1)}"])


def test_var_wins_over_the_file_and_only_names_are_described(tmp_path: Path) -> None:
    (tmp_path / DEV_VARS_FILE).write_text(f"token={SECRET}\ngreeting=file\n")
    values = load_dev_values(tmp_path, {"greeting": "option"})
    assert values.merged == {"token": SECRET, "greeting": "option"}
    assert values.describe() == f"greeting (--var), token ({DEV_VARS_FILE})"
    assert DevValues().describe() == "none" and DevValues().merged == {}


def test_at_most_as_many_values_as_the_control_plane_takes(tmp_path: Path) -> None:
    (tmp_path / DEV_VARS_FILE).write_text("".join(f"k{i}=v\n" for i in range(MAX_KEYS)))
    assert len(load_dev_values(tmp_path, {}).merged) == MAX_KEYS
    with pytest.raises(ConfigError, match=f"at most {MAX_KEYS} config values, not {MAX_KEYS + 1}"):
        load_dev_values(tmp_path, {"one_more": "v"})


def test_the_file_is_no_build_input(tmp_path: Path) -> None:
    project = tmp_path / "config"
    shutil.copytree(EXAMPLES / "c" / "config", project, ignore=shutil.ignore_patterns("build"))
    before = cache_key("c", "v", [("project", project)])
    (project / DEV_VARS_FILE).write_text(f"greeting={SECRET}\n")
    assert cache_key("c", "v", [("project", project)]) == before
    (project / "other.txt").write_text("a source file changes the key\n")
    assert cache_key("c", "v", [("project", project)]) != before
