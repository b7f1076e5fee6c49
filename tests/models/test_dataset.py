"""Datasets: Kaggle folders, the paper's CSVs, dispatch, and loading that skips bad files."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.training.dataset import (DataSource, DatasetError, Sample, load_csv, load_folder,
                                     load_images, load_samples)
from models.core.preprocess import InputSpec, preprocess, read_image

DATA = Path(__file__).resolve().parents[3] / "shared/data/brain_tumor_dataset"
SPEC = InputSpec(32, 32, 1)


def _slice_png(seed: int, size: int = 64) -> bytes:
    """A small head-like slice: textured ellipse on black, different for each seed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    cv2.ellipse(img, (size // 2, size // 2), (size // 3, size * 2 // 5), 0, 0, 360, 1, -1)
    img = img * rng.integers(60, 255, (size, size), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_load_folder_reads_the_real_dataset() -> None:
    # Prepare
    if not (DATA / "MANIFEST.tsv").is_file():
        pytest.skip(f"real dataset not found at {DATA}")
    manifest = {rel: int(label) for rel, label, _md5 in
                (line.split("\t") for line in
                 (DATA / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines())}
    # Execute
    samples = load_folder(DATA)
    # Assert
    labels = [s.label for s in samples]
    assert (len(samples), labels.count(1), labels.count(0)) == (253, 155, 98)
    assert {s.rel: s.label for s in samples} == manifest
    assert {"yes/Y1.jpg", "yes/Y100.JPG", "no/no 9.png"} <= {s.rel for s in samples}
    assert all(s.path == DATA / s.rel and s.path.is_file() for s in samples)


def test_load_folder_labels_images_by_sub_folder(tmp_path: Path) -> None:
    # Prepare: upper-case suffix, a non-image file and a nested folder to ignore
    _write(tmp_path / "yes/b.JPG", _slice_png(1))
    _write(tmp_path / "yes/a.png", _slice_png(2))
    _write(tmp_path / "yes/notes.txt", b"not an image")
    _write(tmp_path / "yes/nested/c.png", _slice_png(3))
    _write(tmp_path / "no/d.jpeg", _slice_png(4))
    # Execute
    samples = load_folder(tmp_path)
    # Assert
    assert samples == [Sample(tmp_path / "yes/a.png", 1, "yes/a.png"),
                       Sample(tmp_path / "yes/b.JPG", 1, "yes/b.JPG"),
                       Sample(tmp_path / "no/d.jpeg", 0, "no/d.jpeg")]


def test_load_folder_refuses_missing_no_or_no_images(tmp_path: Path) -> None:
    # Prepare
    _write(tmp_path / "yes/a.png", _slice_png(1))
    (tmp_path / "empty/yes").mkdir(parents=True)
    (tmp_path / "empty/no").mkdir()
    # Execute / Assert
    with pytest.raises(DatasetError, match="no/"):
        load_folder(tmp_path)
    with pytest.raises(DatasetError, match="no images"):
        load_folder(tmp_path / "empty")


def test_load_csv_tolerates_bom_backslashes_and_text_labels(tmp_path: Path, caplog) -> None:
    # Prepare: the paper's notebooks wrote Windows paths; line 6 has an unknown label,
    # line 7 no label column at all, line 8 no file name
    csv_path = tmp_path / "index.csv"
    csv_path.write_text("filename,labels\r\n"
                        "imgs\\a.png,1\r\n"
                        "imgs\\sub\\b.png,0\r\n"
                        " imgs/c.png , Yes \r\n"
                        "imgs\\d.png,no\r\n"
                        "imgs\\e.png,maybe\r\n"
                        "imgs\\f.png\r\n"
                        ",1\r\n", encoding="utf-8-sig")
    assert csv_path.read_bytes().startswith(b"\xef\xbb\xbf")
    # Execute
    with caplog.at_level(logging.WARNING, logger="models.training.dataset"):
        samples = load_csv(csv_path)
    # Assert
    assert [(s.rel, s.label) for s in samples] == [
        ("imgs/a.png", 1), ("imgs/sub/b.png", 0), ("imgs/c.png", 1), ("imgs/d.png", 0)]
    assert samples[1].path == tmp_path / "imgs" / "sub" / "b.png"
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert skipped == [f"{csv_path}:{line}: skipped (bad filename or label)"
                       for line in (6, 7, 8)]


@pytest.mark.parametrize("text, match", [
    ("file,label\na.png,1\n", "needs columns"),
    ("", "needs columns"),
    ("filename,labels\n", "no usable rows"),
    ("filename,labels\na.png,perhaps\n", "no usable rows"),
], ids=["wrong-columns", "empty-file", "header-only", "all-rows-bad"])
def test_load_csv_refuses_unusable_index(tmp_path: Path, text: str, match: str) -> None:
    # Prepare
    csv_path = tmp_path / "index.csv"
    csv_path.write_text(text, encoding="utf-8")
    # Execute / Assert
    with pytest.raises(DatasetError, match=match):
        load_csv(csv_path)


def test_load_samples_dispatches_on_folder_or_csv(tmp_path: Path) -> None:
    # Prepare
    _write(tmp_path / "data/yes/a.png", _slice_png(1))
    _write(tmp_path / "data/no/b.png", _slice_png(2))
    csv_path = tmp_path / "data/Index.CSV"
    csv_path.write_text("filename,labels\nyes/a.png,1\n", encoding="utf-8")
    (tmp_path / "list.txt").write_text("filename,labels\nyes/a.png,1\n", encoding="utf-8")
    # Execute
    from_folder = load_samples(tmp_path / "data")
    from_csv = load_samples(csv_path)
    # Assert
    assert from_folder == load_folder(tmp_path / "data")
    assert from_csv == [Sample(tmp_path / "data/yes/a.png", 1, "yes/a.png")]
    for bad in (tmp_path / "list.txt", tmp_path / "missing.csv", tmp_path / "nowhere"):
        with pytest.raises(DatasetError, match="not a manifest .*, a dataset folder"):
            load_samples(bad)


def test_load_images_skips_a_few_unreadable_files_and_stays_aligned(tmp_path, caplog):
    # Prepare: one corrupt file among 120 good ones (under 1 %)
    files = [(_write(tmp_path / f"g{i}.png", _slice_png(i)), i % 2) for i in range(120)]
    files.insert(7, (_write(tmp_path / "corrupt.jpg", np.random.default_rng(0).bytes(2048)), 1))
    samples = [Sample(p, label, p.name) for p, label in files]
    # Execute
    with caplog.at_level(logging.WARNING, logger="models.training.dataset"):
        images, labels, kept = load_images(samples, SPEC, workers=3)
    # Assert
    assert [s.rel for s in kept] == [f"g{i}.png" for i in range(120)]
    assert labels.dtype == np.int64 and labels.tolist() == [i % 2 for i in range(120)]
    assert images.shape == (120, 32, 32, 1) and images.dtype == np.float32
    for image, sample in zip(images[:3], kept):
        assert np.array_equal(image, preprocess(read_image(sample.path), SPEC))
    assert str(tmp_path / "corrupt.jpg") in "\n".join(r.getMessage() for r in caplog.records)


def test_load_images_stops_when_more_than_one_percent_are_unreadable(tmp_path: Path) -> None:
    # Prepare: good, corrupt, good, zero-byte, good, missing
    rng = np.random.default_rng(0)
    files = [(_write(tmp_path / "g1.png", _slice_png(1)), 1),
             (_write(tmp_path / "corrupt.jpg", rng.bytes(2048)), 1),
             (_write(tmp_path / "g2.png", _slice_png(2)), 0),
             (_write(tmp_path / "empty.png", b""), 0),
             (_write(tmp_path / "g3.png", _slice_png(3)), 1),
             (tmp_path / "gone.png", 0)]
    samples = [Sample(p, label, p.name) for p, label in files]
    # Execute
    with pytest.raises(DatasetError) as refused:
        load_images(samples, SPEC)
    # Assert: a silently shrunk dataset would change every figure
    assert "3 of 6 files could not be decoded" in str(refused.value)
    assert str(tmp_path / "corrupt.jpg") in str(refused.value)


def test_load_images_with_nothing_readable_raises(tmp_path: Path) -> None:
    # Prepare
    bad = [Sample(_write(tmp_path / "x.jpg", b"\xff\xd8garbage"), 1, "x.jpg"),
           Sample(_write(tmp_path / "y.png", b""), 0, "y.png")]
    # Execute / Assert
    with pytest.raises(DatasetError, match="no image could be loaded"):
        load_images(bad, SPEC)


SHARED = DATA.parent
MANIFEST_HEADER = "path\tlabel\tsite\tsubject\tview\tsequence\tsource\tlicense\tmd5\n"


def _manifest(root: Path, rows: list[tuple[str, str, str, str, bytes]]) -> Path:
    """A manifest over files written from (path, label, site, subject, bytes)."""
    lines = [MANIFEST_HEADER]
    for rel, label, site, subject, data in rows:
        _write(root / rel, data)
        md5 = hashlib.md5(data).hexdigest()
        lines.append(f"{rel}\t{label}\t{site}\t{subject}\taxial\tFLAIR\tsrc\tCC-BY\t{md5}\n")
    path = root / "MANIFEST.tsv"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_load_manifest_reads_every_site_of_the_real_manifest() -> None:
    # Prepare
    if not (SHARED / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared manifest not found at {SHARED}")
    # Execute
    samples = load_samples(SHARED)
    # Assert: the counts of the data's README less Kaggle's abdominal CT (Y248), patients
    # from the manifest
    by_site: dict[str, list[int]] = {}
    for s in samples:
        by_site.setdefault(s.site, []).append(s.label)
    assert {k: (len(v), sum(v)) for k, v in by_site.items()} == {
        "kaggle_navoneel": (252, 154), "site_tcga_lgg_du": (1222, 646),
        "site_tcga_lgg_ht": (686, 449), "site_tcga_lgg_cs": (378, 228),
        "site_tcga_lgg_fg": (381, 195), "site_ljubljana_ms": (310, 0)}
    patients = {s.site: set() for s in samples}
    for s in samples:
        patients[s.site].add(s.subject)
    assert {k: len(v) for k, v in patients.items() if k != "kaggle_navoneel"} == {
        "site_tcga_lgg_du": 45, "site_tcga_lgg_ht": 34, "site_tcga_lgg_cs": 16,
        "site_tcga_lgg_fg": 14, "site_ljubljana_ms": 7}
    assert patients["kaggle_navoneel"] == {""}
    assert all(s.path.is_file() and s.path == SHARED / s.rel for s in samples)
    assert "brain_tumor_dataset/yes/Y248.JPG" not in {s.rel for s in samples}
    assert {s.license.split(" ")[0] for s in samples if "tcga" in s.site} == {"CC"}


def test_sites_are_chosen_by_name_and_unknown_names_are_refused(tmp_path: Path) -> None:
    # Prepare
    manifest = _manifest(tmp_path, [("a/yes/1.png", "yes", "a", "p1", _slice_png(1)),
                                    ("b/no/2.png", "no", "b", "p2", _slice_png(2)),
                                    ("c/no/3.png", "no", "c", "p3", _slice_png(3))])
    # Execute
    only_a = load_samples(DataSource(tmp_path, sites=("a",)))
    without_a = load_samples(DataSource(manifest, exclude_sites=("a",)))
    # Assert
    assert [s.rel for s in only_a] == ["a/yes/1.png"]
    assert [s.site for s in without_a] == ["b", "c"]
    with pytest.raises(DatasetError, match="unknown site.*kaggle.*has a, b, c"):
        load_samples(DataSource(manifest, sites=("a", "kaggle")))
    with pytest.raises(DatasetError, match="choosing sites needs"):
        load_samples(DataSource(DATA, sites=("a",)))


def test_manifest_rows_missing_or_altered_are_reported_and_stop_the_run(tmp_path: Path,
                                                                        caplog) -> None:
    # Prepare: 150 good rows, then one altered and one missing file
    rows = [(f"s/yes/{i}.png", "yes", "s", f"p{i}", _slice_png(i)) for i in range(150)]
    manifest = _manifest(tmp_path, rows)
    (tmp_path / "s/yes/3.png").write_bytes(_slice_png(999))
    (tmp_path / "s/yes/4.png").unlink()
    # Execute: 2 of 150 bad (1.3 %) stops the run; 1 of 150 is reported and left out
    with caplog.at_level(logging.WARNING, logger="models.training.dataset"):
        with pytest.raises(DatasetError, match="2 of 150 files are missing or altered"):
            load_samples(manifest)
        (tmp_path / "s/yes/4.png").write_bytes(_slice_png(4))
        samples = load_samples(manifest)
    # Assert
    assert len(samples) == 149 and "s/yes/3.png" not in {s.rel for s in samples}
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{tmp_path / 's/yes/3.png'}: md5 differs" in log
    assert f"{tmp_path / 's/yes/4.png'}: missing" in log


@pytest.mark.parametrize("text, match", [
    ("path\tlabel\n", "missing column"),
    (MANIFEST_HEADER + "x.png\tmaybe\ts\t\taxial\tT1\tsrc\tlic\t\n", "label yes/no"),
], ids=["columns", "label"])
def test_a_malformed_manifest_is_refused(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "MANIFEST.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=match):
        load_samples(tmp_path / "MANIFEST.tsv")
