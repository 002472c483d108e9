"""Consume messages effectively exactly once: dedup row and handler writes commit together."""
