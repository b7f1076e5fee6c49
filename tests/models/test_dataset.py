"""Datasets: Kaggle folders, the paper's CSVs, dispatch, and loading that skips bad files."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.training.dataset import (DatasetError, Sample, load_csv, load_folder, load_images,
                                     load_samples)
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
        with pytest.raises(DatasetError, match="not a dataset folder"):
            load_samples(bad)


def test_load_images_skips_unreadable_files_and_stays_aligned(tmp_path: Path, caplog) -> None:
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
    with caplog.at_level(logging.WARNING, logger="models.training.dataset"):
        images, labels, kept = load_images(samples, SPEC, workers=3)
    # Assert
    assert [s.rel for s in kept] == ["g1.png", "g2.png", "g3.png"]
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0, 1]
    assert images.shape == (3, 32, 32, 1) and images.dtype == np.float32
    for image, sample in zip(images, kept):
        assert np.array_equal(image, preprocess(read_image(sample.path), SPEC))
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("corrupt.jpg", "empty.png", "gone.png"):
        assert str(tmp_path / name) in warnings


def test_load_images_with_nothing_readable_raises(tmp_path: Path) -> None:
    # Prepare
    bad = [Sample(_write(tmp_path / "x.jpg", b"\xff\xd8garbage"), 1, "x.jpg"),
           Sample(_write(tmp_path / "y.png", b""), 0, "y.png")]
    # Execute / Assert
    with pytest.raises(DatasetError, match="no image could be loaded"):
        load_images(bad, SPEC)
