"""One real server per broker for the session; a broker that cannot run fails in CI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.cases import NAMES, load
from tests.conformance.cases.base import BrokerCase, BrokerServer
from tests.conftest import in_ci


@pytest.fixture(scope="session", params=NAMES)
def case(request: pytest.FixtureRequest) -> BrokerCase:
    return load(request.param)


@pytest.fixture(scope="session")
def broker(case: BrokerCase) -> Iterator[BrokerServer]:
    try:
        manager = case.server()
        server = manager.__enter__()
    except Exception as exc:
        if in_ci():
            raise
        pytest.skip(f"{case.name} server cannot run here: {exc}")
    try:
        yield server
    finally:
        manager.__exit__(None, None, None)
