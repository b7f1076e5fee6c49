"""The persistent outbox of head updates against a real coordinator: order, refusals,
the coordinator down, a reboot, backoff, and what a crash leaves."""
from __future__ import annotations

import json
import threading
import uuid

import pytest

from device.sync import CoordinatorClient, Outbox
from tests.conftest import running
from tests.device.sync.wire import DEVICE, files, update


def test_flush_sends_in_order_and_empties_the_outbox(client, coord, tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    update_id, payload, meta = update(coord)
    outbox.put(update_id, payload, meta)

    result = outbox.flush(client)

    assert (result.sent, result.refused, result.deferred) == (1, 0, 0)
    assert outbox.pending() == [] and files(outbox.path) == []
    assert coord.store.load_payload(coord.store.get_update(update_id)) == payload


def test_a_refused_update_moves_to_refused_and_the_next_is_sent(client, coord, tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    bad_id, bad_payload, bad_meta = update(coord, nan=True)
    good_id, good_payload, good_meta = update(coord)
    outbox.put(bad_id, bad_payload, bad_meta)
    outbox.put(good_id, good_payload, good_meta)

    result = outbox.flush(client)
    again = outbox.flush(client)

    assert (result.sent, result.refused, result.deferred) == (1, 1, 0)
    assert (again.sent, again.refused) == (0, 0)          # never retried
    [refused] = outbox.refused()
    assert refused.update_id == bad_id and refused.payload_path.read_bytes() == bad_payload
    assert refused.refusal["reason"] == "payload" and refused.refusal["status"] == 422
    assert files(outbox.path) == []
    assert coord.store.get_update(good_id).device_id == DEVICE


def test_coordinator_down_then_reboot_delivers_the_update(coord, coord_app, token,
                                                          closed_url, tmp_path):
    update_id, payload, meta = update(coord)
    outbox = Outbox(tmp_path, seed=0)
    outbox.put(update_id, payload, meta)

    down = outbox.flush(CoordinatorClient(closed_url, token, timeout=5), now=1000.0)

    assert (down.sent, down.refused, down.deferred) == (0, 0, 1)
    [entry] = outbox.pending()
    assert entry.attempts == 1 and 1000.0 < entry.next_attempt_at <= 1000.0 + 10.0
    assert entry.payload_path.read_bytes() == payload

    # Prepare: the coordinator comes up, the device reboots (a new Outbox on the folder).
    with running(coord_app) as url:
        rebooted = Outbox(tmp_path, seed=1)
        too_early = rebooted.flush(CoordinatorClient(url, token), now=1000.5)
        result = rebooted.flush(CoordinatorClient(url, token), now=entry.next_attempt_at)

    assert (too_early.sent, too_early.deferred) == (0, 1)
    assert (result.sent, result.refused, result.deferred) == (1, 0, 0)
    assert rebooted.pending() == [] and files(rebooted.path) == []
    stored = coord.store.get_update(update_id)
    assert stored.device_id == DEVICE and coord.store.load_payload(stored) == payload


def test_a_delivered_update_whose_answer_was_lost_is_a_duplicate(client, coord, tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    update_id, payload, meta = update(coord)
    outbox.put(update_id, payload, meta)
    client.post_update(payload, meta)        # reached the coordinator, answer lost

    result = outbox.flush(client)

    assert result.sent == 1 and outbox.pending() == []
    assert coord.store.current_round().n_updates == 1


def test_backoff_grows_and_is_capped(closed_url, tmp_path):
    outbox = Outbox(tmp_path, backoff_base=5.0, backoff_max=900.0, seed=0)
    outbox.put(uuid.uuid4().hex, b"payload", {"device_id": DEVICE})
    client = CoordinatorClient(closed_url, "nd_x", timeout=5)
    now, delays = 0.0, []

    for _ in range(10):
        outbox.flush(client, now=now)
        [entry] = outbox.pending()
        delays.append(entry.next_attempt_at - now)
        now = entry.next_attempt_at

    assert entry.attempts == 10
    for n, delay in enumerate(delays, start=1):
        nominal = min(5.0 * 2 ** n, 900.0)
        assert 0.8 * nominal <= delay <= nominal
    assert delays[0] < delays[3] < delays[6] and max(delays) <= 900.0
    assert all(d >= 0.8 * 900 for d in delays[-3:])


def test_two_devices_jitter_differently(tmp_path):
    a = Outbox(tmp_path / "a", seed=1)
    b = Outbox(tmp_path / "b", seed=2)

    assert a.backoff(3) != b.backoff(3)


def test_an_entry_not_yet_due_is_not_sent(closed_url, tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    outbox.put(uuid.uuid4().hex, b"payload", {"device_id": DEVICE})
    client = CoordinatorClient(closed_url, "nd_x", timeout=5)
    outbox.flush(client, now=0.0)

    result = outbox.flush(client, now=1.0)

    assert (result.sent, result.deferred) == (0, 1)
    assert outbox.pending()[0].attempts == 1            # no second attempt was made


def test_after_the_clock_went_back_a_deferred_entry_is_due_at_once(closed_url, tmp_path):
    # Prepare: one failed attempt at t=0 (next attempt within 900 s); the clock then
    # steps back two days (a wrong clock at boot corrected by NTP, a replaced RTC battery).
    outbox = Outbox(tmp_path, seed=0)
    outbox.put(uuid.uuid4().hex, b"payload", {"device_id": DEVICE})
    client = CoordinatorClient(closed_url, "nd_x", timeout=5)
    outbox.flush(client, now=0.0)

    result = outbox.flush(client, now=-2 * 86400.0)

    # Assert: a wait longer than the longest backoff is the clock's doing: sent now.
    assert result.deferred == 1 and outbox.pending()[0].attempts == 2


def test_half_written_entries_are_removed_on_recovery(tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    kept = uuid.uuid4().hex
    outbox.put(kept, b"complete", {"device_id": DEVICE})
    crashed = [uuid.uuid4().hex for _ in range(3)]
    (outbox.path / f"{crashed[0]}.npz.tmp").write_bytes(b"half a payl")   # during payload
    (outbox.path / f"{crashed[1]}.npz").write_bytes(b"payload")           # before the json
    (outbox.path / f"{crashed[1]}.json.tmp").write_text('{"meta": {')
    (outbox.path / f"{crashed[2]}.json").write_text(json.dumps(              # payload lost
        {"meta": {}, "attempts": 0, "next_attempt_at": 0, "created_ns": 1}))

    rebooted = Outbox(tmp_path, seed=0)

    assert [e.update_id for e in rebooted.pending()] == [kept]
    assert files(rebooted.path) == [f"{kept}.json", f"{kept}.npz"]


def test_put_refuses_bad_or_repeated_ids(tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    update_id = uuid.uuid4().hex
    outbox.put(update_id, b"x", {})

    for bad in ("../../etc/passwd", "ABC", update_id):
        with pytest.raises(ValueError):
            outbox.put(bad, b"x", {})
    with pytest.raises(ValueError):
        outbox.put(uuid.uuid4().hex, b"x", {"update_id": uuid.uuid4().hex})
    assert [e.meta["update_id"] for e in outbox.pending()] == [update_id]


def test_pending_is_oldest_first(tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    ids = [uuid.uuid4().hex for _ in range(5)]
    for update_id in ids:
        outbox.put(update_id, b"x", {})

    assert [e.update_id for e in Outbox(tmp_path).pending()] == ids


def test_concurrent_puts_are_all_kept(tmp_path):
    outbox = Outbox(tmp_path, seed=0)

    def producer() -> None:
        for _ in range(10):
            outbox.put(uuid.uuid4().hex, b"x", {})
    threads = [threading.Thread(target=producer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    pending = outbox.pending()
    assert len(pending) == 80 and len({e.created_ns for e in pending}) == 80
