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


def test_a_scrypt_hash_is_replaced_by_argon2_at_the_next_sign_in(tmp_path: Path) -> None:
    # Prepare: an account made by older software (Werkzeug's scrypt)
    from werkzeug.security import generate_password_hash
    accounts = SQLiteAccountStore(tmp_path)
    accounts.add_user("old", "clinician", generate_password_hash("an old passphrase"))
    try:
        # Execute: the user signs in with the right password
        user = rules.sign_in(accounts, "old", "an old passphrase")

        # Assert: let in, and the stored hash is now argon2id, which still verifies
        assert user is not None and user.name == "old"
        stored = accounts.get_user("old").password_hash
        assert stored.startswith("$argon2id$")
        assert rules.sign_in(accounts, "old", "an old passphrase") is not None
        assert rules.sign_in(accounts, "old", "a wrong passphrase") is None
    finally:
        accounts.close()
