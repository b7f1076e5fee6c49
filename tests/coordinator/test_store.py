"""Contract tests of the coordinator store, run against every implementation (only SQLite
so far), plus a few SQLite-specific checks (WAL, schema version, a real os._exit)."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from coordinator import exc
from coordinator.exc import AuthError, ConflictError, InputError, NotFoundError, StoreError
from coordinator.store import (
    AUDIT_FIELDS, CoordinatorStore, Round, SQLiteCoordinatorStore, Update,
)

ROOT = Path(__file__).resolve().parents[2]


def npz(seed: int = 0, size: int = 8) -> bytes:
    """A real head delta as ``.npz`` bytes (what a device uploads)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    np.savez(buf, kernel=rng.normal(size=(size, 1)).astype(np.float32),
             bias=np.zeros(1, np.float32))
    return buf.getvalue()


def _break_sqlite_inserts(state_dir: Path) -> None:
    conn = sqlite3.connect(state_dir / "coordinator.db")
    conn.execute("CREATE TRIGGER fail_insert BEFORE INSERT ON updates "
                 "BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END")
    conn.commit()
    conn.close()


@dataclass
class Impl:
    """How to open one implementation on a directory, where its payload files live, and
    how to make its update inserts fail."""

    open: Callable[[Path], CoordinatorStore]
    payload_dir: Callable[[Path], Path]
    break_inserts: Callable[[Path], None]


IMPLS = {"sqlite": Impl(SQLiteCoordinatorStore, lambda d: d / "updates",
                        _break_sqlite_inserts)}


@pytest.fixture(params=["sqlite"])
def impl(request: pytest.FixtureRequest) -> Impl:
    return IMPLS[request.param]


@pytest.fixture
def store(impl: Impl, tmp_path: Path) -> Iterator[CoordinatorStore]:
    opened = impl.open(tmp_path)
    yield opened
    opened.close()


def uid() -> str:
    return uuid.uuid4().hex


def send(store: CoordinatorStore, round_id: int, device_id: str, update_id: str | None = None,
         payload: bytes | None = None, **kw: Any) -> tuple[Update, bool]:
    """add_update with plausible defaults."""
    args: dict[str, Any] = dict(base_version=0, examples=12, norm=0.5,
                                metrics={"loss": 0.3}, meta={"arch": "paper"})
    args.update(kw)
    return store.add_update(update_id or uid(), round_id, device_id,
                            payload=npz() if payload is None else payload, **args)


def enrolled(store: CoordinatorStore, *ids: str) -> None:
    for device_id in ids:
        store.enroll(device_id, f"hash-{device_id}")


def payload_files(impl: Impl, state_dir: Path) -> set[str]:
    return {p.name for p in impl.payload_dir(state_dir).iterdir()}


# --- devices --------------------------------------------------------------------------

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


# --- rounds ---------------------------------------------------------------------------

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


# --- updates --------------------------------------------------------------------------

def test_add_update_stores_payload_and_counts(store: CoordinatorStore, impl: Impl,
                                              tmp_path: Path) -> None:
    # Prepare
    enrolled(store, "pi-1", "pi-2")
    rnd = store.open_round(0)
    p1, p2 = npz(1), npz(2, size=16)
    # Execute
    u1, created1 = send(store, rnd.id, "pi-1", payload=p1, examples=7, norm=1.25)
    u2, created2 = send(store, rnd.id, "pi-2", payload=p2)
    # Assert
    assert created1 and created2
    assert (u1.round_id, u1.device_id, u1.examples, u1.norm, u1.bytes) == \
        (rnd.id, "pi-1", 7, 1.25, len(p1))
    assert u1.metrics == {"loss": 0.3} and u1.meta == {"arch": "paper"}
    current = store.current_round()
    assert (current.n_updates, current.bytes_received) == (2, len(p1) + len(p2))
    assert store.updates_for_round(rnd.id) == [u1, u2]
    assert store.get_update(u1.id) == u1
    assert store.load_payload(u1) == p1 and store.load_payload(u2) == p2
    assert payload_files(impl, tmp_path) == {f"{u1.id}.npz", f"{u2.id}.npz"}


def test_retry_with_same_update_id_is_idempotent(store: CoordinatorStore) -> None:
    # Prepare
    enrolled(store, "pi-1")
    rnd = store.open_round(0)
    update_id = uid()
    first, _ = send(store, rnd.id, "pi-1", update_id, payload=npz(1))
    # Execute: the device did not see the answer and sends it again (even changed)
    again, created = send(store, rnd.id, "pi-1", update_id, payload=npz(9), examples=99)
    # Assert
    assert created is False and again == first
    assert store.load_payload(again) == npz(1)  # payload not rewritten
    current = store.get_round(rnd.id)
    assert (current.n_updates, current.bytes_received) == (1, len(npz(1)))


def test_retry_after_round_closed_still_answers_existing(store: CoordinatorStore) -> None:
    enrolled(store, "pi-1")
    rnd = store.open_round(0)
    first, _ = send(store, rnd.id, "pi-1", "ab" * 16)
    store.close_round(rnd.id, "closed", "quorum")
    assert send(store, rnd.id, "pi-1", "ab" * 16) == (first, False)


def test_second_update_from_a_device_in_a_round_conflicts(store: CoordinatorStore) -> None:
    # Prepare
    enrolled(store, "pi-1", "pi-2")
    rnd = store.open_round(0)
    first, _ = send(store, rnd.id, "pi-1")
    # Execute / Assert
    with pytest.raises(ConflictError, match="one update per device per round"):
        send(store, rnd.id, "pi-1")
    with pytest.raises(ConflictError):  # someone else's update id
        send(store, rnd.id, "pi-2", first.id)
    assert store.get_round(rnd.id).n_updates == 1
    assert store.updates_for_round(rnd.id) == [first]


def test_updates_need_an_open_round_and_an_active_device(store: CoordinatorStore) -> None:
    enrolled(store, "pi-1", "pi-2")
    rnd = store.open_round(0)
    store.revoke("pi-2")
    with pytest.raises(AuthError):
        send(store, rnd.id, "pi-2")
    with pytest.raises(NotFoundError):
        send(store, rnd.id, "ghost")
    with pytest.raises(NotFoundError):
        send(store, rnd.id + 1, "pi-1")
    store.close_round(rnd.id, "closed", "deadline")
    with pytest.raises(ConflictError):
        send(store, rnd.id, "pi-1")
    assert store.updates_for_round(rnd.id) == []


@pytest.mark.parametrize("field, value", [
    ("update_id", "AB" * 16), ("update_id", "../../etc/passwd"), ("update_id", "a" * 31),
    ("payload", b"not a zip"), ("payload", "PK-text"), ("examples", -1),
    ("examples", 1.5), ("norm", float("inf")), ("norm", -0.1), ("base_version", True),
    ("metrics", {"loss": float("nan")}), ("meta", ["not", "a", "dict"]),
])
def test_invalid_updates_are_refused_and_write_nothing(store: CoordinatorStore, impl: Impl,
                                                       tmp_path: Path, field: str,
                                                       value: Any) -> None:
    # Prepare
    enrolled(store, "pi-1")
    rnd = store.open_round(0)
    # Execute / Assert
    with pytest.raises(InputError):
        send(store, rnd.id, "pi-1", **{field: value})
    assert payload_files(impl, tmp_path) == set()
    assert store.get_round(rnd.id).n_updates == 0


def test_carry_over_moves_updates_and_counters(store: CoordinatorStore) -> None:
    # Prepare: round 1 under quorum; pi-b already sent a fresh update in round 2
    enrolled(store, "pi-a", "pi-b", "pi-c")
    r1 = store.open_round(0)
    a, _ = send(store, r1.id, "pi-a", payload=npz(1))
    send(store, r1.id, "pi-b", payload=npz(2))
    store.close_round(r1.id, "expired", "under quorum")
    r2 = store.open_round(0)
    b2, _ = send(store, r2.id, "pi-b", payload=npz(3, size=32))
    # Execute
    moved = store.carry_over(r1.id, r2.id)
    # Assert
    assert moved == 1
    in_r2 = store.updates_for_round(r2.id)
    assert {u.id for u in in_r2} == {a.id, b2.id}
    assert [u.device_id for u in store.updates_for_round(r1.id)] == ["pi-b"]
    r2_now, r1_now = store.get_round(r2.id), store.get_round(r1.id)
    assert (r2_now.n_updates, r2_now.bytes_received) == (2, len(npz(1)) + len(npz(3, 32)))
    assert (r1_now.n_updates, r1_now.bytes_received) == (1, len(npz(2)))
    assert store.load_payload(store.get_update(a.id)) == npz(1)
    with pytest.raises(ConflictError):  # a's device now has its update in round 2
        send(store, r2.id, "pi-a")


def test_carry_over_refuses_same_or_closed_target(store: CoordinatorStore) -> None:
    r1 = store.open_round(0)
    with pytest.raises(InputError):
        store.carry_over(r1.id, r1.id)
    store.close_round(r1.id, "expired", "x")
    r2 = store.open_round(0)
    store.close_round(r2.id, "closed", "x")
    with pytest.raises(ConflictError):
        store.carry_over(r1.id, r2.id)
    with pytest.raises(NotFoundError):
        store.carry_over(r1.id, 999)


def test_delete_payloads_keeps_rows_and_recover_ignores_them(store: CoordinatorStore,
                                                             impl: Impl,
                                                             tmp_path: Path) -> None:
    # Prepare
    enrolled(store, "pi-1", "pi-2")
    rnd = store.open_round(0)
    u1, _ = send(store, rnd.id, "pi-1")
    send(store, rnd.id, "pi-2")
    with pytest.raises(ConflictError):
        store.delete_payloads(rnd.id)
    store.close_round(rnd.id, "closed", "aggregated")
    # Execute
    removed = store.delete_payloads(rnd.id)
    # Assert
    assert removed == 2 and payload_files(impl, tmp_path) == set()
    assert len(store.updates_for_round(rnd.id)) == 2
    with pytest.raises(NotFoundError):
        store.load_payload(u1)
    assert store.recover() == 0 and store.delete_payloads(rnd.id) == 0


# --- crash safety, recovery, persistence, concurrency ---------------------------------

def test_reopened_store_resumes_the_round_with_its_updates(impl: Impl, tmp_path: Path) -> None:
    # Prepare: a coordinator receives two updates, then dies
    first = impl.open(tmp_path)
    enrolled(first, "pi-1", "pi-2", "pi-3")
    rnd = first.open_round(4)
    u1, _ = send(first, rnd.id, "pi-1", payload=npz(1))
    u2, _ = send(first, rnd.id, "pi-2", payload=npz(2))
    first.audit("update_received", "pi-1", {"round": rnd.id})
    first.close()
    # Execute
    second = impl.open(tmp_path)
    try:
        # Assert
        assert second.current_round() == first_round_after(rnd, 2, len(npz(1) + npz(2)))
        assert second.updates_for_round(rnd.id) == [u1, u2]
        assert second.load_payload(u2) == npz(2)
        assert send(second, rnd.id, "pi-1", u1.id) == (u1, False)
        assert send(second, rnd.id, "pi-3")[1] is True
        assert second.current_round().n_updates == 3
        assert second.device_by_token("hash-pi-2").id == "pi-2"
        assert second.audit_events()[0].kind == "update_received"
    finally:
        second.close()


def first_round_after(rnd: Round, n: int, nbytes: int) -> Round:
    return Round(**{**rnd.__dict__, "n_updates": n, "bytes_received": nbytes})


def test_recover_removes_orphans_and_temp_files_keeps_referenced(
        store: CoordinatorStore, impl: Impl, tmp_path: Path) -> None:
    # Prepare: what a kill between file and row, or during a write, leaves behind
    enrolled(store, "pi-1")
    kept, _ = send(store, store.open_round(0).id, "pi-1")
    updates = impl.payload_dir(tmp_path)
    (updates / ("cd" * 16 + ".npz")).write_bytes(npz(5))
    (updates / ".tmp-a1b2c3").write_bytes(npz(5)[:10])
    (updates / "README").write_text("not ours")
    # Execute
    removed = store.recover()
    # Assert
    assert removed == 2
    assert payload_files(impl, tmp_path) == {f"{kept.id}.npz", "README"}
    assert store.load_payload(kept) == npz()


def test_failing_insert_leaves_no_payload_file(impl: Impl, tmp_path: Path) -> None:
    # Prepare
    store = impl.open(tmp_path)
    enrolled(store, "pi-1", "pi-2")
    rnd = store.open_round(0)
    kept, _ = send(store, rnd.id, "pi-1")
    impl.break_inserts(tmp_path)
    try:
        # Execute
        with pytest.raises(StoreError):
            send(store, rnd.id, "pi-2")
        # Assert
        assert payload_files(impl, tmp_path) == {f"{kept.id}.npz"}
        assert store.get_round(rnd.id).n_updates == 1
    finally:
        store.close()


def test_concurrent_updates_from_many_devices_are_all_counted(
        store: CoordinatorStore, impl: Impl, tmp_path: Path) -> None:
    # Prepare: 4 threads, each sending for its own 10 devices (and retrying once)
    devices = [[f"pi-{t}-{i}" for i in range(10)] for t in range(4)]
    enrolled(store, *[d for group in devices for d in group])
    rnd = store.open_round(0)
    errors: list[BaseException] = []

    def worker(group: list[str]) -> None:
        try:
            for n, device_id in enumerate(group):
                update_id = uid()
                send(store, rnd.id, device_id, update_id, payload=npz(n))
                assert send(store, rnd.id, device_id, update_id)[1] is False
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(g,)) for g in devices]
    # Execute
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # Assert
    assert errors == []
    final = store.get_round(rnd.id)
    assert final.n_updates == 40
    assert final.bytes_received == 4 * sum(len(npz(n)) for n in range(10))
    assert len({u.device_id for u in store.updates_for_round(rnd.id)}) == 40
    assert len(payload_files(impl, tmp_path)) == 40


def test_closed_store_fails_health_check_and_calls(impl: Impl, tmp_path: Path) -> None:
    store = impl.open(tmp_path)
    assert store.ping() is True
    store.close()
    store.close()  # idempotent
    assert store.ping() is False
    with pytest.raises(StoreError, match="closed"):
        store.list_devices()


# --- bundles --------------------------------------------------------------------------

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


# --- audit, admins --------------------------------------------------------------------

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


def test_admins_and_login_throttling(store: CoordinatorStore) -> None:
    # Prepare
    assert store.count_admins() == 0 and store.get_admin("root") is None
    # Execute
    store.add_admin("root", "scrypt$hash")
    for at in (100.0, 200.0, 300.0):
        store.record_login_failure("root", at)
    # Assert
    assert store.count_admins() == 1 and store.get_admin("root").password_hash == "scrypt$hash"
    with pytest.raises(ConflictError):
        store.add_admin("root", "other")
    assert store.recent_failures("root", 150.0) == 2
    assert store.recent_failures("10.0.0.9", 0.0) == 0
    store.clear_failures("root")
    assert store.recent_failures("root", 0.0) == 0


# --- SQLite-specific ------------------------------------------------------------------

def test_sqlite_uses_wal_and_a_private_file(tmp_path: Path) -> None:
    SQLiteCoordinatorStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "coordinator.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        conn.close()
    assert (tmp_path / "coordinator.db").stat().st_mode & 0o077 == 0


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    SQLiteCoordinatorStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "coordinator.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteCoordinatorStore(tmp_path)


def test_sqlite_kill_between_payload_and_row_leaves_nothing_after_restart(
        tmp_path: Path) -> None:
    # Prepare: a child dies (os._exit, like kill -9) after the durable payload write,
    # before its row is inserted
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from coordinator.store import sqlite\n"
        "store = sqlite.SQLiteCoordinatorStore(Path(sys.argv[1]))\n"
        "store.enroll('pi-1', 'h1')\n"
        "rnd = store.open_round(0)\n"
        "write = sqlite.write_atomic\n"
        "def write_then_die(*args):\n"
        "    write(*args)\n"
        "    os._exit(9)\n"
        "sqlite.write_atomic = write_then_die\n"
        f"store.add_update({'ab' * 16!r}, rnd.id, 'pi-1', 0, 5, 1.0, {{}}, {npz()!r}, {{}})\n")
    # Execute
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, timeout=60)
    left_behind = sorted(p.name for p in (tmp_path / "updates").iterdir())
    store = SQLiteCoordinatorStore(tmp_path)
    # Assert
    try:
        assert proc.returncode == 9, proc.stderr
        assert left_behind == ["ab" * 16 + ".npz"]  # complete, fsynced, but no row
        assert list((tmp_path / "updates").iterdir()) == []
        rnd = store.current_round()
        assert (rnd.n_updates, rnd.bytes_received) == (0, 0)
        with pytest.raises(NotFoundError):
            store.get_update("ab" * 16)
        assert send(store, rnd.id, "pi-1", "ab" * 16)[1] is True  # the retry succeeds
    finally:
        store.close()


def test_exceptions_carry_http_status_and_builtin_bases() -> None:
    assert (exc.InputError.status, exc.AuthError.status, exc.NotFoundError.status,
            exc.ConflictError.status, exc.RejectedError.status,
            exc.StoreError.status) == (400, 401, 404, 409, 422, 500)
    assert issubclass(exc.AuthError, PermissionError)
    assert issubclass(exc.NotFoundError, LookupError)
    assert issubclass(exc.ConfigError, (exc.CoordinatorError, ValueError))
    rejected = exc.RejectedError("norm 9.1 exceeds 5.0", "norm")
    assert (str(rejected), rejected.reason) == ("norm 9.1 exceeds 5.0", "norm")
