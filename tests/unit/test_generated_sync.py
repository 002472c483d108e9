"""`inbox/batch_sync.py` is generated from `inbox/batch_async.py`: checked in current.

Fails when someone edits either file by hand; run `scripts/async_to_sync.py` to regenerate.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "async_to_sync.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_sync_batch_module_is_current(script: ModuleType) -> None:
    checked_in = script.TARGET.read_text(encoding="utf-8")
    assert checked_in.startswith(script.HEADER)
    assert script.generate() == checked_in, "stale: run scripts/async_to_sync.py"


def test_the_conversion_keeps_comments_and_renames_only_code(script: ModuleType) -> None:
    source = (
        "@contextlib.asynccontextmanager\n"
        "async def ahandle(aconnect: AsyncConnection[Any]) -> AsyncIterator[None]:\n"
        "    # await stays in a comment, and 'aclose' in a string\n"
        "    async with aconnect.transaction():\n"
        "        yield await (await aconnect.execute('aclose')).fetchone()\n"
        "    async for row in aconnect.__aiter__():\n"
        "        await row.aclose(ahandle=1)\n"
    )
    assert script.to_sync(source) == script.HEADER + (
        "@contextlib.contextmanager\n"
        "def handle(connect: Connection[Any]) -> Iterator[None]:\n"
        "    # await stays in a comment, and 'aclose' in a string\n"
        "    with connect.transaction():\n"
        "        yield (connect.execute('aclose')).fetchone()\n"
        "    for row in connect.__iter__():\n"
        "        row.close(handle=1)\n"
    )


def test_an_async_comprehension_is_refused(script: ModuleType) -> None:
    with pytest.raises(script.Unsupported, match="async comprehension"):
        script.to_sync("async def f(xs):\n    return [x async for x in xs]\n")
