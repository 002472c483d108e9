"""The layout's promises that no tool checks on its own: every broker folder is registered,
has its extra, and only shared modules are exempt from the contract that keeps folders apart."""

from __future__ import annotations

import tomllib
from pathlib import Path

from outboxkit.brokers.registry import SCHEMES

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FOLDERS = sorted(p.parent.name for p in (REPO / "brokers").glob("*/__init__.py"))


def test_every_broker_folder_is_registered_and_every_registered_broker_has_a_folder() -> None:
    assert sorted({s.broker for s in SCHEMES.values()}) == FOLDERS


def test_every_scheme_names_an_extra_that_exists() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {s.extra for s in SCHEMES.values()} <= set(extras)


def test_each_broker_folder_has_the_sides_its_schemes_promise() -> None:
    for scheme, entry in SCHEMES.items():
        folder = REPO / "brokers" / entry.broker
        assert (folder / "publisher.py").is_file(), scheme
        has_consumer = entry.consumer and not entry.table
        assert (folder / "consumer.py").is_file() or not has_consumer, scheme


def test_the_independence_contract_covers_every_broker_folder() -> None:
    [contract] = [
        c
        for c in PYPROJECT["tool"]["importlinter"]["contracts"]
        if c["name"] == "one broker folder never imports another"
    ]
    assert contract["modules"] == ["outboxkit.brokers.*"]
    shared = {line.split(" -> ")[1] for line in contract["ignore_imports"]}
    # Only modules directly under brokers/ may be imported across folders, never a folder.
    assert all((REPO / "brokers" / f"{m.rsplit('.', 1)[1]}.py").is_file() for m in shared)


def test_the_checkout_links_map_every_library_folder_into_the_root() -> None:
    for folder in ("outbox", "inbox", "relay", "migrations", "brokers"):
        link = REPO / "outboxkit" / folder
        assert link.is_symlink() and link.resolve() == REPO / folder, folder
