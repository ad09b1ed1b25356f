"""What each language module provides to the build driver."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.build.toolchain import Toolchain
from edge.config.function import FunctionConfig


@dataclass(frozen=True)
class Work:
    """One build's private scratch space (deleted afterwards)."""

    dir: Path

    @property
    def tmp(self) -> Path:
        return self.dir / "tmp"


@dataclass(frozen=True)
class Language:
    # (label, file or directory) pairs hashed into the cache key besides project and WIT.
    sdk_inputs: Callable[[], Sequence[tuple[str, Path]]]
    # A string that changes whenever the tools' output could.
    toolchain_version: Callable[[Toolchain], str]
    # Builds the component into the work dir and returns its path.
    compile: Callable[[Path, FunctionConfig, Toolchain, Work], Path]
