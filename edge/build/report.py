"""`edge build` and `edge deploy` building a function with a spinner, and the summary line."""

from __future__ import annotations

from pathlib import Path

from edge.build.core import BuildResult, build
from edge.cli_output import Output, human_bytes


def build_with_progress(out: Output, project: Path) -> BuildResult:
    """Builds PROJECT with a spinner naming the current step (hashing, compiling, ...)."""
    with out.spinner(f"building {project}") as step:
        return build(project, on_step=step)


def summary(b: BuildResult) -> str:
    how = "cache hit" if b.cache_hit else "compiled"
    return (f"built {b.function} ({b.lang}): {b.path}, {human_bytes(b.size_bytes)} "
            f"in {b.seconds:.2f} s ({how})")
