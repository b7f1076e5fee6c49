"""Datasets: the Kaggle ``yes/``/``no/`` folder layout and the paper's CSV files.

A dataset is a list of :class:`Sample` (file path, label, path relative to the dataset
root). Images are decoded and preprocessed by :mod:`models.core.preprocess`; a file that
cannot be read is reported with its path and skipped, and the run goes on.
"""
from __future__ import annotations

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models.core.preprocess import InputSpec, preprocess, read_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
FOLDER_LABELS = {"yes": 1, "no": 0}
TEXT_LABELS = {"1": 1, "0": 0, "yes": 1, "no": 0, "tumor": 1, "tumour": 1,
               "no_tumor": 0, "no_tumour": 0}


class DatasetError(ValueError):
    """The dataset location or its index is unusable."""


@dataclass(frozen=True)
class Sample:
    """One labelled image file: ``label`` 1 = tumour, 0 = none."""

    path: Path
    label: int
    rel: str


def load_folder(root: str | Path) -> list[Sample]:
    """Samples from a Kaggle-style folder with ``yes/`` and ``no/`` sub-folders."""
    root = Path(root)
    samples = []
    for name, label in FOLDER_LABELS.items():
        folder = root / name
        if not folder.is_dir():
            raise DatasetError(f"{root}: missing sub-folder '{name}/'")
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(p, label, f"{name}/{p.name}"))
    if not samples:
        raise DatasetError(f"{root}: no images in yes/ or no/")
    return samples


def load_csv(csv_path: str | Path) -> list[Sample]:
    """Samples from a CSV with columns ``filename,labels`` (paths relative to the CSV).

    Windows backslashes in file names are tolerated (the paper's notebooks wrote them).
    """
    csv_path = Path(csv_path)
    base = csv_path.parent
    samples = []
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"filename", "labels"} <= set(reader.fieldnames):
            raise DatasetError(f"{csv_path}: needs columns 'filename,labels', "
                               f"found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            rel = (row["filename"] or "").strip().replace("\\", "/")
            label = TEXT_LABELS.get((row["labels"] or "").strip().lower())
            if not rel or label is None:
                logger.warning("%s:%s: skipped (bad filename or label)", csv_path, line)
                continue
            samples.append(Sample(base / rel, label, rel))
    if not samples:
        raise DatasetError(f"{csv_path}: no usable rows")
    return samples


def load_samples(location: str | Path) -> list[Sample]:
    """Samples from a dataset folder or a CSV file, whichever ``location`` is."""
    location = Path(location)
    if location.is_dir():
        return load_folder(location)
    if location.suffix.lower() == ".csv" and location.is_file():
        return load_csv(location)
    raise DatasetError(f"{location}: not a dataset folder (yes/, no/) or a .csv file")


def _load_one(sample: Sample, spec: InputSpec) -> np.ndarray | None:
    try:
        return preprocess(read_image(sample.path), spec)
    except (OSError, ValueError) as exc:
        logger.warning("skipped %s: %s", sample.path, exc)
        return None


def load_images(samples: Sequence[Sample], spec: InputSpec = InputSpec(), workers: int = 2
                ) -> tuple[np.ndarray, np.ndarray, list[Sample]]:
    """Decode and preprocess samples; unreadable files are logged and left out.

    Returns
    -------
    images : (N, H, W, C) float32 in [0, 255]
    labels : (N,) int64
    kept : the samples that loaded, aligned with ``images``
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda s: _load_one(s, spec), samples))
    kept = [s for s, a in zip(samples, arrays) if a is not None]
    if not kept:
        raise DatasetError("no image could be loaded")
    images = np.stack([a for a in arrays if a is not None])
    labels = np.array([s.label for s in kept], dtype=np.int64)
    return images, labels, kept
