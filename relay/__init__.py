"""The relay: a sidecar that forwards committed outbox messages to a broker at least once."""
