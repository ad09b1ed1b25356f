"""A function's `edge.toml`: name, language, limits, instance policy, capabilities, config.

[function]
name = "hello"
lang = "python"            # python | c | js (default: by source's suffix, else c)
source = "app.py"          # entry file, relative to the project

[limits]                   # all optional; defaults below
deadline_ms = 100
memory_limit_mib = 128
request_body_limit_bytes = 10485760
response_body_limit_bytes = 10485760

[instance]
policy = "fresh"           # fresh | reuse
reuse_max_requests = 100   # with policy = "reuse"

[capabilities]             # everything is denied unless granted here
wall_clock = false         # true: real time; false: time frozen at the request's start

[config]                   # values the function reads with config.get
greeting = "hello"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config.toml_fields import Table, load_toml
from edge.errors import ConfigError

MIB = 1024 * 1024
LANGUAGES = ("python", "c", "js")
DEFAULT_SOURCE = {"python": "app.py", "c": "main.c", "js": "index.js"}
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Limits:
    deadline_ms: int = 100
    memory_limit_bytes: int = 128 * MIB
    request_body_limit_bytes: int = 10 * MIB
    response_body_limit_bytes: int = 10 * MIB


@dataclass(frozen=True)
class InstancePolicy:
    """`fresh`: a new instance per request. `reuse`: keep one for up to `reuse_max_requests`
    sequential requests (never two at once), dropped after any trap."""

    policy: str = "fresh"
    reuse_max_requests: int = 100

    @property
    def reuse(self) -> bool:
        return self.policy == "reuse"


@dataclass(frozen=True)
class Capabilities:
    wall_clock: bool = False


@dataclass(frozen=True)
class FunctionConfig:
    name: str
    lang: str = "c"
    source: str = "main.c"
    limits: Limits = field(default_factory=Limits)
    instance: InstancePolicy = field(default_factory=InstancePolicy)
    capabilities: Capabilities = field(default_factory=Capabilities)
    config: dict[str, str] = field(default_factory=dict)


def parse_function_config(data: dict[str, Any], source: str) -> FunctionConfig:
    root = Table(data, source)
    root.reject_unknown({"function", "limits", "instance", "capabilities", "config"})

    fn = root.table("function")
    fn.reject_unknown({"name", "lang", "source"})
    name = fn.require("name", str)
    if not NAME_RE.match(name):
        raise ConfigError(
            f"{fn.where('name')} must be lower-case letters, digits and '-', starting with a "
            f"letter (at most 63), got {name!r}"
        )
    lang = fn.choice("lang", LANGUAGES, _lang_of(fn.data.get("source")))

    lim = root.table("limits")
    lim.reject_unknown(
        {"deadline_ms", "memory_limit_mib", "request_body_limit_bytes", "response_body_limit_bytes"}
    )
    defaults = Limits()
    limits = Limits(
        deadline_ms=lim.positive_int("deadline_ms", defaults.deadline_ms, 60_000),
        memory_limit_bytes=lim.positive_int(
            "memory_limit_mib", defaults.memory_limit_bytes // MIB, 4096
        )
        * MIB,
        request_body_limit_bytes=lim.positive_int(
            "request_body_limit_bytes", defaults.request_body_limit_bytes, 1024 * MIB
        ),
        response_body_limit_bytes=lim.positive_int(
            "response_body_limit_bytes", defaults.response_body_limit_bytes, 1024 * MIB
        ),
    )

    inst = root.table("instance")
    inst.reject_unknown({"policy", "reuse_max_requests"})
    instance = InstancePolicy(
        policy=inst.choice("policy", ("fresh", "reuse"), "fresh"),
        reuse_max_requests=inst.positive_int("reuse_max_requests", 100, 1_000_000),
    )

    caps = root.table("capabilities")
    caps.reject_unknown({"wall_clock"})
    capabilities = Capabilities(wall_clock=caps.get("wall_clock", bool, False))

    return FunctionConfig(
        name=name,
        lang=lang,
        source=fn.get("source", str, DEFAULT_SOURCE[lang]),
        limits=limits,
        instance=instance,
        capabilities=capabilities,
        config=root.string_map("config"),
    )


def _lang_of(source: object) -> str:
    """Without `lang`, the entry file's suffix says it (`source = "app.py"` is Python, which
    used to be handed to the C compiler); C when that does not tell."""
    suffix = Path(source).suffix if isinstance(source, str) else ""
    return {".py": "python", ".js": "js", ".mjs": "js"}.get(suffix, "c")


def load_function_config(project_dir: Path) -> FunctionConfig:
    path = project_dir / "edge.toml"
    if not path.is_file():
        # The usual cause is a wrong directory, not a lost file: say which, and what makes one.
        what = "is not a directory" if not project_dir.is_dir() else "has no edge.toml"
        raise ConfigError(
            f"{project_dir} {what}: a function project is a directory with an edge.toml "
            "(`edge new NAME` makes one)"
        )
    return parse_function_config(load_toml(path), str(path))
