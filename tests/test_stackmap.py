"""Stack positions mapped through the component's source map section, in process: the section's
framing, the rewrite of log lines, decoding once, off the caller's thread and only when asked,
and maps that cannot be used."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.build.js_map import relocate, source_name
from edge.control.component_check import check_component_framing
from edge.errors import BuildFailed
from edge.sandbox import stackmap
from edge.sandbox.sourcemap import decode
from edge.sandbox.stackmap import (
    RUNTIME_NAME,
    SECTION,
    StackMapper,
    find_section,
    rewrite,
    section_bytes,
)

PREAMBLE = b"\0asm\x0d\x00\x01\x00"
# Generated line 1 (0-based 0): column 4 -> lib/a.js 10:2; line 2: column 0 -> index.js 3:0.
MAP = json.dumps({"version": 3, "sources": ["lib/a.js", "index.js"], "names": [],
                  "mappings": "IAUE;ACPF"}).encode()  # fmt: skip


def component(*sections: bytes) -> bytes:
    # A core-module section (id 1) stands in for the real contents: only framing matters here.
    return PREAMBLE + b"\x01\x03abc" + b"".join(sections)


def test_the_section_is_found_among_others() -> None:
    wasm = component(section_bytes("other", b"x"), section_bytes(SECTION, MAP))
    found = find_section(wasm)
    assert found is not None and bytes(found) == MAP
    assert find_section(component(section_bytes("other", MAP))) is None
    assert find_section(b"\0asm\x01\x00\x00\x00" + section_bytes(SECTION, MAP)) is None  # module
    assert find_section(wasm[:-3]) is None  # cut short: the last section runs past the end
    assert find_section(PREAMBLE + b"\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff") is None


def test_the_control_plane_accepts_a_component_with_the_section() -> None:
    check_component_framing(component(section_bytes(SECTION, MAP)))


def test_positions_of_the_bundle_are_rewritten() -> None:
    m = decode(MAP)
    assert rewrite("    at f@bundle.js:1:5", m) == "    at f@lib/a.js:11:3"
    assert rewrite("    at f@bundle.js:1:9", m) == "    at f@lib/a.js:11:3"  # same segment
    # console.error(err): one message, a frame per line.
    assert rewrite("Error: x\nf@bundle.js:1:5\n@bundle.js:2:1\n", m) == (
        "Error: x\nf@lib/a.js:11:3\n@index.js:4:1\n"
    )
    # Not mapped: before the first segment, a line past the map, other files.
    for line in ("f@bundle.js:1:4", "f@bundle.js:9:1", "f@/tmp/x/bundle.js:1:5",
                 "f@mybundle.js:1:5", "f@bundle.js"):  # fmt: skip
        assert rewrite(line, m) == line
    assert rewrite("f@bundle.js:1:5", None) == "f@bundle.js:1:5"  # no map (yet)


def test_the_runtime_frame_loses_the_build_machines_path() -> None:
    # componentize-js's bindings, in its temporary folder of the build; map or not.
    frame = "export@/tmp/edge-build-x-k58u/tmp/898e/sources/initializer.js:242:15"
    for source_map in (decode(MAP), None):
        assert rewrite(f"Error: x\nf@bundle.js:9:1\n{frame}", source_map) == (
            f"Error: x\nf@bundle.js:9:1\nexport@{RUNTIME_NAME}"
        )
    # The author's own initializer.js: relative once mapped, or a file name of a message.
    for line in ("init@lib/initializer.js:1:2", "see initializer.js:1:2", "x/initializer.js:1:2"):
        assert rewrite(line, None) == line


class Recorder:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.clock_calls = 0

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def clock(self) -> float:
        self.clock_calls += 1
        return float(self.clock_calls)


class Spawned:
    """Stands in for the decode's thread: keeps what it was given, to run when the test says."""

    def __init__(self) -> None:
        self.targets: list[Callable[[], None]] = []

    def __call__(self, target: Callable[[], None]) -> None:
        self.targets.append(target)

    def run(self) -> None:
        for target in self.targets:
            target()


def test_decoded_once_on_its_own_thread_and_only_when_asked() -> None:
    seen, spawned = Recorder(), Spawned()
    mapper = StackMapper(MAP, seen.warn, seen.clock, spawned)
    # Nothing decodes a map by itself: a line before the decode stays as it was.
    assert mapper.rewrite("f@bundle.js:1:5") == "f@bundle.js:1:5"
    assert mapper.wants_map("f@bundle.js:1:5") and not mapper.wants_map("Uncaught Error: boom")
    assert not mapper.decoded and not spawned.targets
    mapper.start()
    mapper.start()
    assert len(spawned.targets) == 1 and not mapper.decoded  # started once, not run here
    assert not mapper.wait(0)
    spawned.run()
    assert mapper.decoded and mapper.wait(0) and mapper.decode_s == 1.0
    assert mapper.rewrite("f@bundle.js:1:5") == "f@lib/a.js:11:3"
    assert mapper.rewrite("g@bundle.js:2:1") == "g@index.js:4:1"
    assert seen.clock_calls == 2 and seen.warnings == []  # one decode, timed once


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"version": 3, "sources": ["a.js"], "mappings": "AC!A"}', b"\xff" * 10],
)
def test_a_corrupt_map_leaves_lines_unchanged_and_warns_once(raw: bytes) -> None:
    seen = Recorder()
    mapper = StackMapper(raw, seen.warn, seen.clock, lambda target: target())
    for _ in range(3):
        assert mapper.wait(0)
        assert mapper.rewrite("f@bundle.js:1:5") == "f@bundle.js:1:5"
    assert len(seen.warnings) == 1
    assert seen.warnings[0].startswith("JavaScript stack positions left unmapped: bad source map")


def test_the_decodes_thread_ends_the_wait_even_when_the_decode_fails_unexpectedly() -> None:
    seen = Recorder()
    mapper = StackMapper(MAP, seen.warn, seen.clock)
    mapper._raw = None  # a bug: the decode raises something other than SourceMapError
    assert mapper.wait(30)  # the real thread: it ended, and said so
    assert mapper.rewrite("f@bundle.js:1:5") == "f@bundle.js:1:5"
    assert seen.warnings == ["JavaScript stack positions left unmapped: AssertionError: "]


def test_components_without_a_usable_section_get_no_mapper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = Recorder()
    assert StackMapper.for_component(component(), seen.warn) is None
    assert seen.warnings == []
    with_map = component(section_bytes(SECTION, MAP))
    assert StackMapper.for_component(with_map, seen.warn) is not None
    monkeypatch.setattr(stackmap, "MAX_MAP_BYTES", len(MAP) - 1)
    assert StackMapper.for_component(with_map, seen.warn) is None
    assert seen.warnings == [
        f"JavaScript stack positions left unmapped: the source map has {len(MAP)} bytes, over "
        f"the limit of {len(MAP) - 1}"
    ]


def test_build_names_sources_relative_to_the_project(tmp_path: Path) -> None:
    project, sdk, work = tmp_path / "proj", tmp_path / "sdk" / "js", tmp_path / "work"
    for d in (project / "lib", sdk, work):
        d.mkdir(parents=True)
    entry = work / "entry.js"

    def name(path: Path) -> str:
        return source_name(str(path), project, sdk, entry)

    assert name(project / "lib" / "parse.js") == "lib/parse.js"
    assert name(project / "node_modules" / "x" / "i.js") == "node_modules/x/i.js"
    assert name(sdk / "edge.js") == "edge:sdk/edge.js"
    assert name(entry) == "edge:entry.js"
    assert name(tmp_path / "shared" / "util.js") == "../shared/util.js"
    esbuild_map = json.dumps({"version": 3, "sources": ["../proj/index.js", "entry.js"],
                              "sourcesContent": ["x", "y"], "names": [], "mappings": "AAAA"})
    out = json.loads(relocate(esbuild_map.encode(), work, project, sdk, entry))
    assert out["sources"] == ["index.js", "edge:entry.js"] and "sourcesContent" not in out
    with pytest.raises(BuildFailed, match="not one"):
        relocate(b'{"version": 3}', work, project, sdk, entry)
