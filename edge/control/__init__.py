"""The control plane: stores tenants, functions, immutable signed versions and deployments, and
pushes signed configuration snapshots to edge nodes over a long poll.

Layout: `store` (SQLite, one transaction per change) and `blobs` (component bytes on disk) hold
the state; `history` and `split` are pure rules; `signing` and `snapshot` are the wire contract
with nodes; `api` + `server` are the HTTP shell; `client` + `commands` are the CLI side.
"""
