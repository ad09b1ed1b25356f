"""Building functions into components: C (zig), Python (componentize-py), JS (componentize-js)."""

from edge.build.core import BuildResult, BuildStats, build, build_function, stats
from edge.build.toolchain import Toolchain

__all__ = ["BuildResult", "BuildStats", "Toolchain", "build", "build_function", "stats"]
