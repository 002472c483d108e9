"""`outboxkit bench --quick` as a subprocess: the report and the chart are written, with ratios.

No wall-clock thresholds: this machine's speed is not under test, the harness is.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_bench_writes_a_report_with_ratios(tmp_path: Path) -> None:
    out = tmp_path / "BENCH.md"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "outboxkit.cli", "bench", "--quick"),
            *("--only", "producer,relay", "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert "## Machine and servers" in report
    assert "PostgreSQL fsync | on" in report
    assert "## Producer overhead" in report
    assert "## Relay throughput" in report
    assert "Did not complete" not in report
    # Every measured row: ours, its reference and a numeric ratio.
    rows = re.findall(r"^\| (.+?) \| (.+?) \| (.+?) \| ([0-9.]+) \|$", report, re.MULTILINE)
    labels = [label for label, *_ in rows]
    assert "psycopg sync: + outbox.write" in labels
    assert "relay → NATS JetStream, vs H" in labels
    assert all(float(ratio) > 0 for *_, ratio in rows)
    target = r"relay → NATS JetStream ÷ H ≥ 0\.8 \| [0-9.]+ \| (met|\*\*not met\*\*) \|"
    assert re.search(target, report)
    chart = out.with_suffix(".png")
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"]({chart.name})" in report
