"""Contract tests of the coordinator store: enrolled devices and the life of a round."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

import pytest

from coordinator.exc import ConflictError, InputError, NotFoundError
from coordinator.store import AUDIT_FIELDS, CoordinatorStore


def test_enroll_then_lookup_by_token_id_and_list(store: CoordinatorStore) -> None:
    # Execute
    device = store.enroll("pi-2", "h2")
    store.enroll("pi-1", "h1")
    # Assert
    assert device.id == "pi-2" and device.active and device.revoked_at is None
    assert datetime.fromisoformat(device.enrolled_at).utcoffset().total_seconds() == 0
    assert store.device_by_token("h2") == device == store.get_device("pi-2")
    assert store.device_by_token("nope") is None
    assert [d.id for d in store.list_devices()] == ["pi-1", "pi-2"]


@pytest.mark.parametrize("bad_id", ["", "a" * 65, "pi 1", "../x", "pi/1", None, 7])
def test_enroll_refuses_malformed_ids(store: CoordinatorStore, bad_id: Any) -> None:
    with pytest.raises(InputError):
        store.enroll(bad_id, "h")
    assert store.list_devices() == []


def test_enroll_conflicts_with_active_id_or_used_token(store: CoordinatorStore) -> None:
    # Prepare
    store.enroll("pi-1", "h1")
    # Execute / Assert
    with pytest.raises(ConflictError):
        store.enroll("pi-1", "h-other")
    with pytest.raises(ConflictError):
        store.enroll("pi-2", "h1")
    assert store.device_by_token("h1").id == "pi-1"


def test_revoke_disables_token_and_reenroll_reactivates(store: CoordinatorStore) -> None:
    # Prepare
    store.enroll("pi-1", "old")
    # Execute
    revoked = store.revoke("pi-1")
    again = store.revoke("pi-1")  # idempotent
    # Assert
    assert not revoked.active and again.revoked_at == revoked.revoked_at
    assert store.device_by_token("old") is None
    assert store.get_device("pi-1").revoked_at is not None
    # Execute: re-enrolling the revoked id with a new token
    back = store.enroll("pi-1", "new")
    # Assert
    assert back.active and store.device_by_token("new") == back
    assert store.device_by_token("old") is None


def test_unknown_devices_are_not_found(store: CoordinatorStore) -> None:
    for call in (lambda: store.revoke("ghost"), lambda: store.get_device("ghost"),
                 lambda: store.get_device("../etc"), lambda: store.touch_device("ghost", 1)):
        with pytest.raises(NotFoundError):
            call()


def test_touch_device_records_last_seen_and_version(store: CoordinatorStore) -> None:
    # Prepare
    store.enroll("pi-1", "h1")
    # Execute
    store.touch_device("pi-1", 3)
    first = store.get_device("pi-1")
    store.touch_device("pi-1", None)
    second = store.get_device("pi-1")
    # Assert
    assert first.model_version == 3 and first.last_seen_at is not None
    assert second.model_version == 3 and second.last_seen_at >= first.last_seen_at


def test_only_one_round_is_open_at_a_time(store: CoordinatorStore) -> None:
    # Prepare
    first = store.open_round(0)
    # Execute / Assert
    with pytest.raises(ConflictError):
        store.open_round(0)
    assert store.current_round() == first
    assert first.status == "open" and first.n_updates == 0 and first.metrics == {}


def test_close_then_open_next_round_with_increasing_ids(store: CoordinatorStore) -> None:
    # Prepare
    first = store.open_round(0)
    # Execute
    closed = store.close_round(first.id, "expired", "deadline, under quorum")
    second = store.open_round(0)
    # Assert
    assert closed.status == "expired" and closed.closed_at is not None
    assert closed.reason == "deadline, under quorum"
    assert second.id > first.id and store.current_round() == second
    assert [r.id for r in store.list_rounds()] == [second.id, first.id]
    assert [r.id for r in store.list_rounds(limit=1)] == [second.id]
    assert store.get_round(first.id) == closed


def test_close_round_refuses_bad_status_and_closed_rounds(store: CoordinatorStore) -> None:
    rnd = store.open_round(0)
    with pytest.raises(InputError):
        store.close_round(rnd.id, "open", "why")
    store.close_round(rnd.id, "closed", "quorum")
    with pytest.raises(ConflictError):
        store.close_round(rnd.id, "expired", "again")
    with pytest.raises(NotFoundError):
        store.close_round(999, "closed", "x")
    with pytest.raises(NotFoundError):
        store.get_round("1")  # type: ignore[arg-type]


def test_record_outcome_needs_a_closed_round_and_stores_it(store: CoordinatorStore) -> None:
    # Prepare
    rnd = store.open_round(2)
    with pytest.raises(ConflictError):
        store.record_outcome(rnd.id, 3, {"acc": 0.9}, "published", 1.5)
    store.close_round(rnd.id, "closed", "quorum reached")
    # Execute
    done = store.record_outcome(rnd.id, 3, {"acc": 0.9, "f1": [0.8, 0.7]}, "published",
                                epsilon=1.5)
    # Assert
    assert (done.published_version, done.reason, done.epsilon) == (3, "published", 1.5)
    assert done.metrics == {"acc": 0.9, "f1": [0.8, 0.7]}
    assert store.get_round(rnd.id) == done
    with pytest.raises(InputError):
        store.record_outcome(rnd.id, None, {"acc": float("nan")}, "x")


def test_bundle_versions_strictly_increase(store: CoordinatorStore) -> None:
    # Prepare
    store.add_bundle(1, None, "bundles/v1", {"acc": 0.8}, True, "initial")
    # Execute
    v3 = store.add_bundle(3, 1, "bundles/v3", {"acc": 0.85}, True, "round 2")
    # Assert
    for version in (3, 2, 0):
        with pytest.raises(ConflictError):
            store.add_bundle(version, None, "bundles/x", {}, True, "")
    assert [b.version for b in store.list_bundles()] == [3, 1]
    assert store.get_bundle(3) == v3 and v3.parent_version == 1 and v3.published
    with pytest.raises(NotFoundError):
        store.get_bundle(2)


def test_latest_bundle_is_the_latest_published(store: CoordinatorStore) -> None:
    assert store.latest_bundle() is None
    store.add_bundle(1, None, "b/v1", {}, True, "initial")
    withheld = store.add_bundle(2, 1, "b/v2", {"acc": 0.5}, False, "failed the gate")
    assert store.latest_bundle().version == 1
    assert withheld.published is False and withheld.reason == "failed the gate"
    with pytest.raises(InputError):  # a parent must be older than its child
        store.add_bundle(5, 5, "b/v5", {}, True, "")
    with pytest.raises(InputError):
        store.add_bundle(5, 2, "b/v5", {}, "yes", "")  # type: ignore[arg-type]


def test_audit_events_newest_first_filtered_and_exported(store: CoordinatorStore) -> None:
    # Prepare
    store.audit("enrolled", "pi-1", {"by": "cli"})
    store.audit("update_rejected", "pi-1", {"reason": "norm", "note": 'a,"b"\nc'})
    store.audit("round_closed", None, {"round": 1})
    # Execute
    events = store.audit_events()
    buf = io.StringIO()
    count = store.export_audit_csv(buf)
    # Assert
    assert [e.kind for e in events] == ["round_closed", "update_rejected", "enrolled"]
    assert events[0].id > events[1].id > events[2].id and events[0].device_id is None
    assert [e.kind for e in store.audit_events(kind="enrolled")] == ["enrolled"]
    assert len(store.audit_events(limit=2)) == 2
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert count == 3 and tuple(rows[0]) == AUDIT_FIELDS
    assert [r["kind"] for r in rows] == ["enrolled", "update_rejected", "round_closed"]
    assert json.loads(rows[1]["detail"]) == {"reason": "norm", "note": 'a,"b"\nc'}
    assert rows[2]["device_id"] == ""
    with pytest.raises(InputError):
        store.audit("bad kind!", None, {})


def test_admins_and_their_sessions(store: CoordinatorStore) -> None:
    # Prepare
    assert store.count_admins() == 0 and store.get_admin("root") is None
    # Execute
    store.add_admin("root", "scrypt$hash")
    store.add_session("a" * 64, "root", expires_at=1e12)
    store.add_session("b" * 64, "root", expires_at=1e12)
    store.end_session("a" * 64)
    # Assert: one session ended by sign-out, the other alive until its expiry
    assert store.count_admins() == 1 and store.get_admin("root").password_hash == "scrypt$hash"
    with pytest.raises(ConflictError):
        store.add_admin("root", "other")
    assert store.session_admin("a" * 64, now=0.0) is None
    assert store.session_admin("b" * 64, now=0.0) == "root"
    assert store.session_admin("b" * 64, now=2e12) is None
    # A new password ends every session of the admin
    store.set_admin_password("root", "argon2$hash")
    assert store.session_admin("b" * 64, now=0.0) is None
    assert store.get_admin("root").password_hash == "argon2$hash"
