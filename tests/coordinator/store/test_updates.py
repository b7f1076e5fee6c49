"""Contract tests of the coordinator store: updates, their payload files, retries,
carry-over between rounds and recovery after a crash."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from coordinator.exc import AuthError, ConflictError, InputError, NotFoundError, StoreError
from coordinator.store import CoordinatorStore, Round
from tests.coordinator.store.contract import Impl, enrolled, npz, payload_files, send, uid


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
