"""Which stable version a rollback returns to, as a pure function of the deployment history.

Rules: the stable versions form a stack. A deploy or promote pushes its version (unless it is
already on top). A rollback to a version that is on the stack pops back to its last occurrence;
a rollback to any other version pushes it. A rollback without a target goes to the entry below
the top. So deploy 1, 2, 3 then rollback, rollback gives 2 then 1; and deploy 1, 2, 3, 1 then
rollback gives 3, the version that was live before the current one. A delete empties the
stack: a function deployed again after `edge function delete` has no earlier stable version to
roll back to (`--to N` still reaches any version kept).
"""

from __future__ import annotations

from collections.abc import Iterable

STABLE_CHANGES = ("deploy", "promote", "rollback")


def stable_stack(events: Iterable[tuple[str, int | None]]) -> list[int]:
    """`events`: (kind, stable version after the change: None after a delete), oldest first."""
    stack: list[int] = []
    for kind, stable in events:
        if kind == "delete":
            stack.clear()
            continue
        if stable is None or kind not in STABLE_CHANGES or (stack and stack[-1] == stable):
            continue
        if kind == "rollback" and stable in stack:
            del stack[len(stack) - stack[::-1].index(stable):]
        else:
            stack.append(stable)
    return stack


def previous_stable(events: Iterable[tuple[str, int | None]]) -> int | None:
    stack = stable_stack(events)
    return stack[-2] if len(stack) >= 2 else None
