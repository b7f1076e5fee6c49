"""Contract tests of the case store: cases, their image and heat-map files, labels,
embeddings, recovery after a crash."""
from __future__ import annotations

import csv
import hashlib
import io
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.exc import InputError, NotFoundError, StoreError
from device.store import EXPORT_FIELDS, CaseStore
from tests.device.store.contract import HEATMAP, PNG, Impl, add, files


def test_add_then_get_returns_the_stored_case_and_image(cases: CaseStore) -> None:
    # Execute
    case = add(cases, heatmap_png=HEATMAP)
    got = cases.get(case.id)
    # Assert
    assert got == case
    assert re.fullmatch(r"[0-9a-f]{32}", case.id)
    assert case.image_name == f"{case.id}.png"
    assert datetime.fromisoformat(case.created_at).utcoffset() == timezone.utc.utcoffset(None)
    assert (case.probability, case.predicted_label, case.uncertain) == (0.9, 1, False)
    assert case.image_sha256 == hashlib.sha256(PNG).hexdigest()
    assert cases.image_path(case).read_bytes() == PNG
    heatmap = cases.heatmap_path(case)
    assert heatmap is not None and heatmap.read_bytes() == HEATMAP
    assert case.status == "unconfirmed" and case.confirmed_label is None


def test_set_heatmap_adds_a_heat_map_later(cases: CaseStore) -> None:
    case = add(cases)

    updated = cases.set_heatmap(case.id, HEATMAP)

    path = cases.heatmap_path(updated)
    assert path is not None and path.read_bytes() == HEATMAP
    assert cases.get(case.id).heatmap_name == updated.heatmap_name
    with pytest.raises(InputError):
        cases.set_heatmap(case.id, b"not a png")


def test_heat_maps_are_valid_since_their_author_last_changed(cases: CaseStore) -> None:
    before = datetime.now(timezone.utc).timestamp()
    first = cases.heatmaps_valid_since("v1 key-a 0.5")

    same = cases.heatmaps_valid_since("v1 key-a 0.5")
    changed = cases.heatmaps_valid_since("v2 key-a 0.5")

    assert before <= first == same <= changed
    assert cases.heatmaps_valid_since("v2 key-a 0.5") == changed
    with pytest.raises(InputError):
        cases.heatmaps_valid_since("")


def test_case_without_heatmap_has_no_heatmap_path(cases: CaseStore) -> None:
    case = add(cases)
    assert cases.heatmap_path(case) is None
    assert files(cases, case) == {case.image_name}


@pytest.mark.parametrize("bad", [
    {"png": b"GIF89a...."}, {"heatmap_png": b"not a png"}, {"source": "email"},
    {"probability": 1.5}, {"probability": float("nan")}, {"predicted_label": 2},
    {"width": 0}, {"height": 2.5}, {"uncertain": "no"}, {"model_version": -1},
    {"latency_ms": -3.0}, {"threshold": True},
])
def test_invalid_case_is_refused_and_writes_nothing(cases: CaseStore, tmp_path: Path,
                                                    bad: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        add(cases, **bad)
    assert cases.count() == 0
    assert [p for p in tmp_path.rglob("*.png")] == []


def test_list_is_newest_first_and_pages(cases: CaseStore) -> None:
    # Prepare
    ids = [add(cases).id for _ in range(5)]
    # Execute
    page1, page2 = cases.list(limit=3), cases.list(limit=3, offset=3)
    # Assert
    assert [c.id for c in page1 + page2] == ids[::-1]
    assert cases.count() == 5


def test_ids_starting_with_a_prefix(cases: CaseStore) -> None:
    ids = sorted(add(cases).id for _ in range(40))  # 40 ids: two share a first digit
    shared = next(a[0] for a, b in zip(ids, ids[1:]) if a[0] == b[0])

    assert cases.ids_starting_with(ids[0][:8]) == [ids[0]]
    assert cases.ids_starting_with(ids[0]) == [ids[0]]
    assert len(cases.ids_starting_with(shared)) == 2  # enough to say "ambiguous"
    assert cases.ids_starting_with(shared, limit=40) == [i for i in ids if i[0] == shared]
    for bad in ("", "G", "%", "_", "a" * 33, None):
        with pytest.raises(InputError):
            cases.ids_starting_with(bad)


def test_confirm_sets_status_and_filters_and_counts(cases: CaseStore) -> None:
    # Prepare
    agreed, disagreed, open_ = add(cases), add(cases), add(cases, predicted_label=0)
    # Execute
    confirmed = cases.confirm(agreed.id, 1, "dr.ada")
    corrected = cases.confirm(disagreed.id, 0, "dr.ada")
    # Assert
    assert confirmed.status == "confirmed" and corrected.status == "disagreed"
    assert confirmed.confirmed_by == "dr.ada" and confirmed.confirmed_at is not None
    assert cases.get(disagreed.id) == corrected
    assert [c.id for c in cases.list("unconfirmed")] == [open_.id]
    assert [c.id for c in cases.list("confirmed")] == [agreed.id]
    assert [c.id for c in cases.list("disagreed")] == [disagreed.id]
    assert [cases.count(s) for s in ("all", "unconfirmed", "confirmed", "disagreed")] \
        == [3, 1, 1, 1]


def test_reconfirming_overwrites_the_label(cases: CaseStore) -> None:
    case = add(cases)
    cases.confirm(case.id, 0, "dr.ada")
    again = cases.confirm(case.id, 1, "dr.bob")
    assert (again.confirmed_label, again.confirmed_by, again.status) == (1, "dr.bob",
                                                                         "confirmed")
    assert cases.count("disagreed") == 0


@pytest.mark.parametrize("label", [2, -1, True, "1", 0.0, None])
def test_confirm_refuses_labels_other_than_0_or_1(cases: CaseStore, label: Any) -> None:
    case = add(cases)
    with pytest.raises(InputError):
        cases.confirm(case.id, label, "dr.ada")
    assert cases.get(case.id).status == "unconfirmed"


def test_list_refuses_unknown_status_and_out_of_range_paging(cases: CaseStore) -> None:
    for call in (lambda: cases.list("pending"), lambda: cases.count("x"),
                 lambda: cases.list(limit=-1), lambda: cases.list(offset=-5),
                 lambda: cases.list(offset=2**63), lambda: cases.list(offset=10**20)):
        with pytest.raises(InputError):
            call()


def test_delete_removes_row_embedding_and_both_files(cases: CaseStore) -> None:
    # Prepare
    case, kept = add(cases, heatmap_png=HEATMAP), add(cases)
    cases.set_embedding(case.id, "bb1", np.ones(4))
    image, heatmap = cases.image_path(case), cases.heatmap_path(case)
    # Execute
    cases.delete(case.id)
    # Assert
    assert not image.exists() and heatmap is not None and not heatmap.exists()
    with pytest.raises(NotFoundError):
        cases.get(case.id)
    with pytest.raises(NotFoundError):
        cases.delete(case.id)
    assert [c.id for c in cases.list()] == [kept.id]
    assert cases.image_path(kept).exists()


@pytest.mark.parametrize("bad_id", [
    "../../etc/passwd", "", "0" * 31, "0" * 33, "A" * 32, "../" + "0" * 29,
    "0" * 31 + "/", "0" * 31 + "\x00", None, 123, "f" * 32,  # the last: well-formed, absent
])
def test_malformed_or_unknown_ids_are_not_found(cases: CaseStore, bad_id: Any) -> None:
    add(cases)
    for call in (lambda: cases.get(bad_id), lambda: cases.delete(bad_id),
                 lambda: cases.confirm(bad_id, 1, "dr.ada"),
                 lambda: cases.set_embedding(bad_id, "bb", np.ones(3))):
        with pytest.raises(NotFoundError):
            call()
    assert cases.count() == 1


def test_export_csv_has_metrics_but_no_image_bytes_or_paths(cases: CaseStore,
                                                            tmp_path: Path) -> None:
    # Prepare
    first, second = add(cases, heatmap_png=HEATMAP), add(cases, source="api")
    cases.confirm(second.id, 0, "dr.ada")
    out = io.StringIO()
    # Execute
    written = cases.export_csv(out)
    # Assert
    text = out.getvalue()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert written == 2 and tuple(rows[0]) == EXPORT_FIELDS
    assert {r["id"]: r["status"] for r in rows} == {first.id: "unconfirmed",
                                                    second.id: "disagreed"}
    assert "PNG" not in text and "heat" not in text
    assert str(tmp_path) not in text and ".png" not in text and "/" not in text


def test_embedding_roundtrip_is_float32_and_keyed_by_backbone(cases: CaseStore) -> None:
    case = add(cases)
    vec = np.array([0.5, -1.25, 3.0], dtype=np.float64)
    cases.set_embedding(case.id, "bb1", vec)
    got = cases.get_embedding(case.id, "bb1")
    assert got is not None and got.dtype == np.float32
    np.testing.assert_array_equal(got, vec.astype(np.float32))
    assert cases.get_embedding(case.id, "bb2") is None
    cases.set_embedding(case.id, "bb2", np.zeros(5))  # a new backbone replaces the old
    assert cases.get_embedding(case.id, "bb1") is None
    assert cases.get_embedding(case.id, "bb2").shape == (5,)  # type: ignore[union-attr]


def test_confirmed_examples_and_missing_embeddings(cases: CaseStore) -> None:
    # Prepare: a confirmed+embedded, b confirmed with another backbone, c unconfirmed
    a, b, c, d = add(cases), add(cases), add(cases), add(cases)
    for case, label in ((a, 1), (b, 0), (d, 0)):
        cases.confirm(case.id, label, "dr.ada")
    cases.set_embedding(a.id, "bb1", np.full(4, 1.0))
    cases.set_embedding(d.id, "bb1", np.full(4, 2.0))
    cases.set_embedding(b.id, "old", np.full(4, 3.0))
    cases.set_embedding(c.id, "bb1", np.full(4, 4.0))
    # Execute
    ids, x, y = cases.confirmed_examples("bb1")
    # Assert
    assert ids == [a.id, d.id]
    assert x.dtype == np.float32 and x.shape == (2, 4)
    np.testing.assert_array_equal(x[:, 0], [1.0, 2.0])
    np.testing.assert_array_equal(y, [1, 0])
    assert cases.cases_missing_embedding("bb1") == [b.id]
    assert cases.cases_missing_embedding("new") == [a.id, b.id, d.id]


def test_confirmed_examples_empty(cases: CaseStore) -> None:
    ids, x, y = cases.confirmed_examples("bb1")
    assert ids == [] and x.shape[0] == 0 and y.shape == (0,)


@pytest.mark.parametrize("vector", [np.ones((2, 2)), np.zeros(0), np.array([1.0, np.nan]),
                                    np.array([1e39]), ["a", "b"]])
def test_invalid_embeddings_are_refused(cases: CaseStore, vector: Any) -> None:
    case = add(cases)
    with pytest.raises(InputError):
        cases.set_embedding(case.id, "bb1", vector)
    assert cases.get_embedding(case.id, "bb1") is None


def test_recover_removes_orphan_and_temp_files_and_keeps_referenced(cases: CaseStore) -> None:
    # Prepare: what a kill -9 between file and row, or during a write, leaves behind
    case = add(cases, heatmap_png=HEATMAP)
    images = cases.image_path(case).parent
    (images / ("ab" * 16 + ".png")).write_bytes(PNG)
    (images / ".tmp-x1y2z3").write_bytes(PNG[:10])
    (images / "README").write_text("not ours")
    # Execute
    removed = cases.recover()
    # Assert
    assert removed == 2
    assert files(cases, case) == {case.image_name, case.heatmap_name, "README"}
    assert cases.get(case.id) == case


def test_reopening_recovers_and_sees_persisted_data(impl: Impl, tmp_path: Path) -> None:
    # Prepare
    store = impl.open_cases(tmp_path)
    case = add(store)
    store.confirm(case.id, 1, "dr.ada")
    store.set_embedding(case.id, "bb1", np.arange(3.0))
    images = store.image_path(case).parent
    store.close()
    (images / ("cd" * 16 + "-heatmap.png")).write_bytes(HEATMAP)
    (images / ".tmp-partial").write_bytes(b"\x89PN")
    # Execute
    reopened = impl.open_cases(tmp_path)
    # Assert
    try:
        assert reopened.get(case.id).status == "confirmed"
        np.testing.assert_array_equal(reopened.get_embedding(case.id, "bb1"), [0, 1, 2])
        assert files(reopened, case) == {case.image_name}
    finally:
        reopened.close()


def test_failing_insert_leaves_no_file(impl: Impl, tmp_path: Path) -> None:
    # Prepare
    store = impl.open_cases(tmp_path)
    kept = add(store)
    impl.break_inserts(tmp_path)
    # Execute
    with pytest.raises(StoreError):
        add(store, heatmap_png=HEATMAP)
    # Assert
    try:
        assert files(store, kept) == {kept.image_name}
        assert store.count() == 1
    finally:
        store.close()


def test_concurrent_adds_all_succeed(cases: CaseStore) -> None:
    # Prepare: each thread also reads and confirms, as request threads do
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for i in range(25):
                case = add(cases)
                cases.confirm(case.id, i % 2, "dr.ada")
                cases.list(limit=5)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    # Execute
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Assert
    assert errors == []
    assert cases.count() == 100 and cases.count("unconfirmed") == 0
    assert len({c.id for c in cases.list(limit=100)}) == 100


def test_closed_store_fails_health_check(impl: Impl, tmp_path: Path) -> None:
    store = impl.open_cases(tmp_path)
    assert store.ping() is True
    store.close()
    assert store.ping() is False
    with pytest.raises(StoreError):
        store.count()


def test_a_case_commits_with_its_embedding_and_a_jpeg_is_kept_as_jpeg(
        cases: CaseStore) -> None:
    # Prepare: an uploaded JPEG, kept as uploaded
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256))
    # Execute
    case = add(cases, png=jpeg, backbone_id="bb1", embedding=np.array([0.5, 2.0]))
    # Assert
    assert case.image_name == f"{case.id}.jpg"
    assert cases.image_path(case).read_bytes() == jpeg
    assert case.image_sha256 == hashlib.sha256(jpeg).hexdigest()
    np.testing.assert_array_equal(cases.get_embedding(case.id, "bb1"), [0.5, 2.0])


@pytest.mark.parametrize("bad", [
    {"backbone_id": "bb1", "embedding": np.array([np.nan])},
    {"backbone_id": "bb1", "embedding": np.ones((2, 2))},
    {"embedding": np.ones(3)}, {"backbone_id": "bb1"},
    {"backbone_id": "", "embedding": np.ones(3)},
], ids=["nan", "2-d", "no-backbone", "no-embedding", "empty-backbone"])
def test_a_bad_embedding_refuses_the_whole_case(cases: CaseStore, tmp_path: Path,
                                                bad: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        add(cases, **bad)
    assert cases.count() == 0
    assert [p for p in tmp_path.rglob("*.png")] == []


def test_a_new_heat_map_replaces_the_old_file(cases: CaseStore) -> None:
    # Prepare
    case = cases.set_heatmap(add(cases).id, HEATMAP)
    first = cases.heatmap_path(case)
    # Execute
    redrawn = cases.set_heatmap(case.id, HEATMAP + b"v2")
    # Assert: the row names the new file; the old one is gone
    path = cases.heatmap_path(redrawn)
    assert path is not None and path.read_bytes() == HEATMAP + b"v2"
    assert first is not None and not first.exists()
    assert files(cases, case) == {case.image_name, redrawn.heatmap_name}
