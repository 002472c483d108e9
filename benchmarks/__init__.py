"""The outboxkit benchmark harness: each figure measured next to its reference, in one run.

    outboxkit bench [--quick] [--only NAME[,NAME…]] [--out BENCHMARKS.md]
    python -m benchmarks …                     (the same)

The harness starts its own PostgreSQL (durable: fsync on) and NATS JetStream in a temporary
directory, runs the selected benchmarks (one module each, listed in `benchmarks.runner`),
and writes a Markdown report plus a PNG chart. Machines are noisy, so every benchmark runs
its reference in the same run and reports the ratio, not just absolute numbers.
"""
