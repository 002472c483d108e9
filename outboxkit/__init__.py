"""outboxkit: a transactional outbox and inbox for PostgreSQL.

One import root for the whole library: `from outboxkit import outbox, inbox` (the write
API; consumption), `outboxkit.relay` (the sidecar), `outboxkit.brokers` (one folder per
broker, the contracts and the scheme registry) and `outboxkit.migrations` (schema). This
package itself holds the `outboxkit` command line, the demo and the embedded development
servers.
"""
