"""Shipping function log lines to the control plane: `POST /v1/node/logs` every interval.

The node connects out (it may sit behind NAT), with its node token, and sends what the bounded
buffer (edge.node.logbuffer) holds, oldest first, with the drop counts as warning lines. A
batch the control plane did not take for a passing reason (unreachable, 5xx) goes back to the
buffer and is retried after a pause; one it refused as malformed (4xx) is counted as dropped,
since sending it again would fail again.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import httpx

from edge.node.background import carry_on
from edge.node.logbuffer import Batch, LogBuffer
from edge.node.logs import line_json
from edge.sandbox.host import LogLine

BATCH_MAX_LINES = 1000
RETRY_S = (0.5, 1.0, 2.0, 5.0)


class LogShipper:
    def __init__(
        self,
        control_url: str,
        token: str,
        node_id: str,
        region: str,
        buffer: LogBuffer,
        interval_s: float,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.region = region
        self.buffer = buffer
        self.interval_s = interval_s
        self.say = say or (lambda m: print(f"edge node: {m}", file=sys.stderr, flush=True))
        self.shipped_total = 0
        self._control_url = control_url
        self._token = token
        # Made at the first shipment: building a client (its TLS context) costs tens of ms,
        # which a node starting up should spend answering requests.
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._control_url,
                headers={"authorization": f"Bearer {self._token}"},
                timeout=httpx.Timeout(10.0),
                trust_env=False,
            )
        return self._client

    def __call__(self, line: LogLine) -> None:
        """The log sink: never blocks, never raises (a full buffer counts the line)."""
        self.buffer.offer(line)

    def body(self, batch: Batch) -> dict[str, object]:
        lines = batch.lines + batch.drop_records(time.time())
        return {
            "node_id": self.node_id,
            "region": self.region,
            "lines": [line_json(line) for line in lines],
        }

    async def ship_once(self) -> bool:
        """Sends one batch; False when it has to be retried later."""
        batch = self.buffer.take(BATCH_MAX_LINES)
        if not batch:
            return True
        try:
            r = await self._http().post("/v1/node/logs", json=self.body(batch))
        except httpx.HTTPError:
            self.buffer.put_back(batch)
            return False
        if r.status_code >= 500:
            self.buffer.put_back(batch)
            return False
        if r.status_code >= 400:
            self.say(f"control plane refused {len(batch.lines)} log lines: {r.text[:200]}")
            self.buffer.put_back(Batch([], batch.dropped))
            self.buffer.drop(batch.lines)
            return True
        self.shipped_total += len(batch.lines)
        return True

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def run(self) -> None:
        failures = 0
        try:
            while True:
                if failures:
                    await asyncio.sleep(RETRY_S[min(failures - 1, len(RETRY_S) - 1)])
                else:
                    await asyncio.sleep(self.interval_s)
                shipped = False
                with carry_on(self.say, "shipping function logs to the control plane"):
                    shipped = await self.ship_once()
                    while shipped and len(self.buffer) >= BATCH_MAX_LINES \
                            and await self.ship_once():
                        pass  # a backlog goes out at once, not one batch per interval
                failures = 0 if shipped else failures + 1
        finally:
            await self.aclose()
