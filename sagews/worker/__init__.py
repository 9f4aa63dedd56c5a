"""sagews-worker: runs user code for workspaces (see docs/protocol-worker.md)."""
