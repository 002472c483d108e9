"""The fault suite's tools: a TCP fault proxy, a world of real processes, and the checker.

Shipped with outboxkit so that you can run the same scenarios against your own set-up:
`outboxkit faults` (or `pytest tests/faults`) writes RELIABILITY.md.
"""
