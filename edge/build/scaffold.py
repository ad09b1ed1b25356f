"""`edge new NAME --lang LANG`: a new project from sdk/templates/<lang>/."""

from __future__ import annotations

from pathlib import Path

from edge.build.toolchain import SDK_DIR
from edge.config.function import LANGUAGES, NAME_RE
from edge.errors import ConfigError, UsageError

TEMPLATES_DIR = SDK_DIR / "templates"
PLACEHOLDER = "{{name}}"


def new_project(dest: Path, name: str, lang: str) -> list[Path]:
    """Copies the template for `lang` into `dest`, replacing {{name}}; returns the files made.

    `dest` may exist only if it is empty, so that nothing of the user's is overwritten. A bad
    name or language is the command line's fault (UsageError), a taken `dest` a ConfigError.
    """
    if lang not in LANGUAGES:
        raise UsageError(f"unknown language {lang!r}: choose one of {', '.join(LANGUAGES)}")
    # The same rule as edge.toml's [function] name, so the generated project loads.
    if not NAME_RE.match(name):
        raise UsageError(
            f"function name {name!r}: use lower-case letters, digits and '-', starting with a "
            "letter (at most 63)"
        )
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"{dest} already exists and is not an empty directory")
    template = TEMPLATES_DIR / lang
    if not template.is_dir():
        raise ConfigError(f"template for {lang} not found at {template}")

    created: list[Path] = []
    for src in sorted(p for p in template.rglob("*") if p.is_file()):
        out = dest / src.relative_to(template)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(src.read_text(encoding="utf-8").replace(PLACEHOLDER, name), encoding="utf-8")
        created.append(out)
    return created
