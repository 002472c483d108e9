"""Run every hostile-input test and write RELIABILITY.md's "hostile input" section.

    .venv/bin/python scripts/hostile_report.py [--out RELIABILITY.md] [pytest args]

Runs `pytest -m hostile` with `OUTBOXKIT_HOSTILE_TALLY` set, then replaces the text between
the section's markers (or appends the section). Exits with pytest's status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

BEGIN = "<!-- hostile-input:begin -->"
END = "<!-- hostile-input:end -->"


def render(tally: dict[str, dict[str, object]], command: str) -> str:
    lines = [
        BEGIN,
        "## Hostile input",
        "",
        "Every parser that reads outside input, fed generated (Hypothesis, a fixed number of",
        "examples, derandomized) and hand-written malformed input. *Refused* is a typed error",
        "or a dead letter; a *crash* is any other exception; *lost* counts well-formed",
        "messages that did not arrive beside the malformed ones.",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.",
        "",
        "| parser | inputs tried | refused | crashes | lost |",
        "|---|---:|---:|---:|---:|",
    ]
    totals = [0, 0, 0, 0]
    for name in sorted(tally):
        row = tally[name]
        values = [int(str(row.get(k, 0))) for k in ("tried", "refused", "crashes", "lost")]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        lines.append(f"| {name} | " + " | ".join(f"{v:,}" for v in values) + " |")
    lines.append("| **all** | " + " | ".join(f"**{v:,}**" for v in totals) + " |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="RELIABILITY.md")
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        tally_path = Path(tmp) / "tally.json"
        env = os.environ | {"OUTBOXKIT_HOSTILE_TALLY": str(tally_path)}
        status = subprocess.call(
            [sys.executable, "-m", "pytest", "-m", "hostile", "-q", *pytest_args], env=env
        )
        tally = json.loads(tally_path.read_text()) if tally_path.exists() else {}
    if not tally:
        print("no hostile-input test ran", file=sys.stderr)
        return status or 1
    section = render(tally, "python scripts/hostile_report.py")
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    out.write_text(text)
    print(f"wrote the hostile-input section of {out} ({len(tally)} parsers)")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
