"""The JavaScript SDK's marks around the Promise its handler returned, over the log import.

componentize-js runs the engine's event loop within the export call until nothing is left to
run; if the handler's Promise is still pending then, no answer can ever come and the engine
traps (`unreachable`), with nothing logged. So the SDK writes AWAITING once it has waited
for the handler's Promise a while (64 microtask hops, which its own watch keeps the loop busy
for: a host call costs ~30 times a hop, and most handlers answer sooner, writing no mark) and
ANSWERED when that Promise gave an answer after AWAITING: an `unreachable` trap between the
two, without an uncaught-exception report (edge.sandbox.uncaught), is a handler whose Promise
never settled (edge.errors.NoResponse). An engine crash in that window would read so too; the
known ones (the disabled clock, timers, fetch) the SDK turns into exceptions first. Work still
running after the answer (waitUntil's) cannot take the answer away by never settling: the loop
just ends.

The function's own log lines never start with NUL (the JavaScript and Python SDKs replace one;
C's `edge_log` takes a C string, which cannot), so a client's text a function logs is never
taken for a mark; a function writing one on purpose mislabels only its
own traps. No new import: the WIT contract (edge:function@0.1.0) is unchanged, and a component
built with an earlier SDK writes no marks, so its never-settled Promises stay 500 `trap`.
"""

from __future__ import annotations

AWAITING = "\0edge:awaiting\0"
ANSWERED = "\0edge:answered\0"

# The same around waitUntil's promises: WAIT_UNTIL_PENDING once one has been pending 64 hops,
# WAIT_UNTIL_SETTLED once every one given has settled. A call that returns an answer between
# the two ended with a promise that can never settle (nothing was left to run), which Workers
# would have let run on: the node logs WAIT_UNTIL_DROPPED, as no code of the SDK runs once the
# engine's loop has run dry.
WAIT_UNTIL_PENDING = "\0edge:wait-until-pending\0"
WAIT_UNTIL_SETTLED = "\0edge:wait-until-settled\0"
WAIT_UNTIL_DROPPED = (
    "waitUntil promise still pending when the request ended: nothing left to run could "
    "settle it, so its work was dropped (the answer stands)"
)
