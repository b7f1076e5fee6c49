"""Each coordinator store contract test runs against every implementation (only SQLite
so far)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from coordinator.store import CoordinatorStore
from tests.coordinator.store.contract import IMPLS, Impl


@pytest.fixture(params=["sqlite"])
def impl(request: pytest.FixtureRequest) -> Impl:
    return IMPLS[request.param]


@pytest.fixture
def store(impl: Impl, tmp_path: Path) -> Iterator[CoordinatorStore]:
    opened = impl.open(tmp_path)
    yield opened
    opened.close()
