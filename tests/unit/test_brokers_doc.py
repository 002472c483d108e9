"""docs/brokers.md and outbox/broker_options.py are generated from the option tables:
this fails when a checked-in copy is not current (run `python scripts/brokers_doc.py`)."""

from __future__ import annotations

import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "brokers_doc.py"


def test_generated_files_are_current() -> None:
    outputs = runpy.run_path(str(SCRIPT))["outputs"]()
    assert len(outputs) == 2
    for path, text in outputs.items():
        assert path.read_text() == text, f"{path.name} is stale: run scripts/brokers_doc.py"


def test_every_table_option_is_documented() -> None:
    script = runpy.run_path(str(SCRIPT))
    doc = script["render_doc"]()
    for _, schemes, _, table in script["brokers"]():
        for scheme in schemes:
            assert f"`{scheme}://`" in doc
        for name in table.names() if table else ():
            assert f"| `{name}` |" in doc
