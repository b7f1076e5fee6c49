"""Account rules (device.accounts) that the web layer's tests do not reach directly."""
from __future__ import annotations

from pathlib import Path

import pytest

from device import accounts as rules
from device.store import SQLiteAccountStore


@pytest.fixture
def store(tmp_path: Path):
    accounts = SQLiteAccountStore(tmp_path)
    accounts.add_user("ada", "admin", rules.hash_password("long enough password"))
    yield accounts
    accounts.close()


def test_a_token_records_its_use_once_a_minute_not_on_every_request(store) -> None:
    # Prepare
    token = rules.new_api_token(store, "pacs", "ada")
    # Execute: two requests in quick succession
    first = rules.token_user(store, token)
    after_first = store.list_tokens()[0].last_used_at
    second = rules.token_user(store, token)
    after_second = store.list_tokens()[0].last_used_at
    # Assert: both are let in; the second wrote nothing (no fsync per API request)
    assert first is not None and second is not None and first.name == "ada"
    assert after_first is not None and after_second == after_first


def test_a_token_records_its_use_again_once_the_minute_is_over(
        store, monkeypatch: pytest.MonkeyPatch) -> None:
    token = rules.new_api_token(store, "pacs", "ada")
    rules.token_user(store, token)
    before = store.list_tokens()[0].last_used_at
    monkeypatch.setattr(rules, "TOKEN_USE_RESOLUTION_S", 0.0)

    rules.token_user(store, token)

    assert store.list_tokens()[0].last_used_at > before


def test_an_unknown_token_or_a_disabled_user_is_refused(store) -> None:
    token = rules.new_api_token(store, "pacs", "ada")
    store.set_disabled("ada", True)

    assert rules.token_user(store, token) is None
    assert rules.token_user(store, "ne_not-a-token") is None
