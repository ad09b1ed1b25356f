"""Building functions into components: C (zig), Python (componentize-py), JS (componentize-js)."""

from edge.build.core import BuildStats, build_function, stats
from edge.build.toolchain import Toolchain

__all__ = ["BuildStats", "Toolchain", "build_function", "stats"]
