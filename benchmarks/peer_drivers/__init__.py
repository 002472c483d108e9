"""Drivers run by the peers benchmark in its own virtualenv (not in outboxkit's).

Each one is a script: `python DRIVER.py DSN COUNT [BUDGET]`. It installs its library's
schema, enqueues COUNT jobs with ~170-byte JSON payloads (not timed), drains them with the
library's own worker and a no-op handler (timed; stopped after BUDGET seconds, the rate then
being over the jobs handled by then), and prints one JSON line:
`{"library": …, "version": …, "messages": …, "seconds": …, "settings": …}`.
"""
