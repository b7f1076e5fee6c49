"""Contract tests of the account store: users, API tokens, web sessions, settings."""
from __future__ import annotations

import pytest

from device.exc import InputError, NotFoundError
from device.store import AccountStore


def test_users_add_get_list_count(accounts: AccountStore) -> None:
    assert accounts.count_users() == 0 and accounts.get_user("ada") is None
    accounts.add_user("ada", "admin", "hash-a")
    accounts.add_user("bob.s", "clinician", "hash-b")
    ada = accounts.get_user("ada")
    assert ada is not None and (ada.role, ada.password_hash, ada.disabled) == (
        "admin", "hash-a", False)
    assert [u.name for u in accounts.list_users()] == ["ada", "bob.s"]
    assert accounts.count_users() == 2


@pytest.mark.parametrize("name,role,hash_", [
    ("ada", "admin", "h"),  # duplicate of the prepared user
    ("eve", "root", "h"), ("", "admin", "h"), ("a" * 65, "admin", "h"),
    ("../eve", "admin", "h"), ("eve smith", "admin", "h"), ("eve", "admin", ""),
])
def test_invalid_or_duplicate_users_are_refused(accounts: AccountStore, name: str, role: str,
                                                hash_: str) -> None:
    accounts.add_user("ada", "admin", "h")
    with pytest.raises(InputError):
        accounts.add_user(name, role, hash_)
    assert accounts.count_users() == 1


def test_set_password_and_disable(accounts: AccountStore) -> None:
    accounts.add_user("ada", "clinician", "old")
    accounts.set_password("ada", "new")
    accounts.set_disabled("ada", True)
    ada = accounts.get_user("ada")
    assert ada is not None and (ada.password_hash, ada.disabled) == ("new", True)
    with pytest.raises(NotFoundError):
        accounts.set_password("nobody", "x")


def test_tokens_lifecycle(accounts: AccountStore) -> None:
    # Prepare
    accounts.add_user("ada", "admin", "h")
    # Execute
    accounts.add_token("scanner-1", "th1", "ada")
    accounts.touch_token("th1")
    # Assert
    token = accounts.find_token("th1")
    assert token is not None and (token.name, token.user) == ("scanner-1", "ada")
    assert token.last_used_at is not None and accounts.find_token("other") is None
    with pytest.raises(InputError):
        accounts.add_token("scanner-1", "th2", "ada")
    with pytest.raises(InputError):
        accounts.add_token("scanner-2", "th1", "ada")
    with pytest.raises(NotFoundError):
        accounts.add_token("scanner-3", "th3", "nobody")
    assert [t.name for t in accounts.list_tokens()] == ["scanner-1"]
    accounts.revoke_token("scanner-1")
    assert accounts.find_token("th1") is None and accounts.list_tokens() == []
    with pytest.raises(NotFoundError):
        accounts.revoke_token("scanner-1")


def test_sessions_end_by_sign_out_expiry_or_for_the_whole_user(
        accounts: AccountStore) -> None:
    # Prepare: ada with three sessions, one already expired
    accounts.add_user("ada", "admin", "h")
    for sid, expires in (("a", 1e12), ("b", 1e12), ("c", 50.0)):
        accounts.add_session(sid * 64, "ada", expires)
    # Execute: sign out of one
    accounts.end_session("a" * 64)
    # Assert: that one ended, the expired one never counts, the other is alive
    assert accounts.session_user("a" * 64, now=100.0) is None
    assert accounts.session_user("c" * 64, now=100.0) is None
    assert accounts.session_user("b" * 64, now=100.0) == "ada"
    assert accounts.end_user_sessions("ada") == 2  # b, and c until pruned
    assert accounts.session_user("b" * 64, now=100.0) is None


def test_a_session_needs_an_existing_user_and_a_users_tokens_go_together(
        accounts: AccountStore) -> None:
    accounts.add_user("ada", "admin", "h")
    with pytest.raises(NotFoundError):
        accounts.add_session("d" * 64, "nobody", 1e12)
    accounts.add_token("t1", "h1", "ada")
    accounts.add_token("t2", "h2", "ada")
    assert accounts.revoke_user_tokens("ada") == 2 and accounts.list_tokens() == []


def test_settings(accounts: AccountStore) -> None:
    assert accounts.get_setting("setup_code_hash") is None
    accounts.set_setting("setup_code_hash", "abc")
    accounts.set_setting("setup_code_hash", "def")
    assert accounts.get_setting("setup_code_hash") == "def"
