"""Each store contract test runs against every implementation (only SQLite so far)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from device.store import AccountStore, CaseStore
from tests.device.store.contract import IMPLS, Impl


@pytest.fixture(params=["sqlite"])
def impl(request: pytest.FixtureRequest) -> Impl:
    return IMPLS[request.param]


@pytest.fixture
def cases(impl: Impl, tmp_path: Path) -> Iterator[CaseStore]:
    store = impl.open_cases(tmp_path)
    yield store
    store.close()


@pytest.fixture
def accounts(impl: Impl, tmp_path: Path) -> Iterator[AccountStore]:
    store = impl.open_accounts(tmp_path)
    yield store
    store.close()
