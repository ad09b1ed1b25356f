"""esbuild's source map of a JS bundle, made fit for the component's custom section.

esbuild names sources relative to the map file, which sits in the build's temporary folder; the
node shows them to the author, so they become relative to the project (`lib/parse.js`). The
SDK and the generated entry get names of their own (`edge:sdk/edge.js`, `edge:entry.js`)
rather than paths of the machine that built them. Where the map lives and why: see
edge.sandbox.stackmap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge.errors import BuildFailed
from edge.sandbox.stackmap import SECTION, section_bytes


def source_name(path: str, project_dir: Path, sdk_dir: Path, entry: Path) -> str:
    """The name a stack shows for one of the bundle's sources (an absolute path)."""
    real = os.path.realpath(path)
    if real == os.path.realpath(entry):
        return "edge:entry.js"
    for root, prefix in ((sdk_dir, "edge:sdk/"), (project_dir, "")):
        rel = os.path.relpath(real, os.path.realpath(root))
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return prefix + Path(rel).as_posix()
    return Path(os.path.relpath(real, os.path.realpath(project_dir))).as_posix()


def relocate(
    map_text: bytes, map_dir: Path, project_dir: Path, sdk_dir: Path, entry: Path
) -> bytes:
    """The map as compact JSON with project-relative `sources` and no `sourcesContent`."""
    try:
        raw = json.loads(map_text)
        sources = raw["sources"]
        raw["sources"] = [
            source_name(str(map_dir / s), project_dir, sdk_dir, entry) for s in sources
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise BuildFailed("esbuild wrote a source map that is not one", str(e)) from None
    raw.pop("sourcesContent", None)
    raw.pop("sourceRoot", None)
    return json.dumps(raw, separators=(",", ":")).encode()


def embed(component: Path, map_json: bytes) -> None:
    """Appends the map to the component as its `edge:js-source-map` custom section."""
    with component.open("ab") as out:
        out.write(section_bytes(SECTION, map_json))
