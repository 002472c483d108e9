"""outboxkit: the command line, the demo and the embedded development servers.

The library itself lives in the top-level packages `outbox` (write API), `relay` (the
sidecar), `inbox` (consumption) and `migrations` (schema).
"""
