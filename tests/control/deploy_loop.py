"""Uploads and deploys as fast as it can until the control plane goes away (crash test).

    python -m tests.control.deploy_loop URL TOKEN
"""

from __future__ import annotations

import os
import sys

import httpx

from edge.control.wire import encode_metadata
from tests.control.conftest import component


def main(url: str, token: str) -> None:
    meta = encode_metadata({"function": {"name": "crash"}}, "loop")
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"},
                      timeout=10) as c:
        n = 0
        while True:
            # Varying sizes, some large, so a kill often lands inside a blob write.
            body = component(os.urandom(1024 + (n % 7) * 100_000))
            try:
                v = c.post("/v1/functions/crash/versions", content=body,
                           headers={"edge-metadata": meta}).json()["number"]
                c.post("/v1/functions/crash/deploy",
                       json={"version": v, "routes": [f"crash{n % 3}.example/"]})
            except httpx.HTTPError:
                return
            n += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
