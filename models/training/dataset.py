"""Datasets: a multi-site ``MANIFEST.tsv``, the Kaggle ``yes/``/``no/`` folder layout
and the paper's CSV files.

A dataset is a list of :class:`Sample` (file path, label, path relative to the dataset
root, and from a manifest its site, patient, sequence, view and licence). Images are
decoded and preprocessed by :mod:`models.core.preprocess`. A file that is missing,
altered (md5) or cannot be decoded is reported with its path and left out; more than
``MAX_BAD_SHARE`` of them stops the run, since a silently shrunk dataset inflates or
deflates every figure.
"""
from __future__ import annotations

import csv
import hashlib
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


MANIFEST_NAME = "MANIFEST.tsv"
MANIFEST_COLUMNS = ("path", "label", "site", "subject", "view", "sequence", "source",
                    "license", "md5")
MAX_BAD_SHARE = 0.01  # more unusable files than this stops the run


class DatasetError(ValueError):
    """The dataset location or its index is unusable."""


@dataclass(frozen=True)
class Sample:
    """One labelled image file: ``label`` 1 = tumour, 0 = none. The other fields come
    from a manifest (empty for folders and CSVs): ``subject`` is the patient id."""

    path: Path
    label: int
    rel: str
    site: str = ""
    subject: str = ""
    sequence: str = ""
    view: str = ""
    license: str = ""


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


def _check_bad(bad: list[str], total: int, what: str) -> None:
    """DatasetError when the ``bad`` files are more than ``MAX_BAD_SHARE`` of ``total``."""
    if len(bad) > MAX_BAD_SHARE * total:
        raise DatasetError(f"{len(bad)} of {total} files {what} (more than "
                           f"{MAX_BAD_SHARE:.0%}), e.g. {'; '.join(bad[:3])}")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


# Files that are not brain MRI slices, by md5 (any copy, in any dataset format): left out
# of every training and evaluation, or the 'not a brain MRI slice' check would learn
# them as slices (docs/model-card.md, "Data").
NOT_BRAIN_SLICES = {
    "f67a11de5061edbd165e3c1ab291b354": "Kaggle yes/Y248.JPG, an abdominal CT labelled tumour",
}


def _without_non_slices(samples: list[Sample]) -> list[Sample]:
    kept = [s for s in samples if _md5(s.path) not in NOT_BRAIN_SLICES]
    for sample in set(samples) - set(kept):
        logger.info("left out %s: %s", sample.path, NOT_BRAIN_SLICES[_md5(sample.path)])
    return kept


def _choose_sites(rows: list[dict], sites: Sequence[str] | None,
                  exclude: Sequence[str] | None, where: Path) -> list[dict]:
    known = sorted({r["site"] for r in rows})
    unknown = sorted((set(sites or ()) | set(exclude or ())) - set(known))
    if unknown:
        raise DatasetError(f"{where}: unknown site(s) {', '.join(unknown)}; the manifest "
                           f"has {', '.join(known)}")
    chosen = [r for r in rows if (not sites or r["site"] in sites)
              and r["site"] not in set(exclude or ())]
    if not chosen:
        raise DatasetError(f"{where}: no rows left after choosing sites")
    return chosen


def load_manifest(path: str | Path, sites: Sequence[str] | None = None,
                  exclude_sites: Sequence[str] | None = None) -> list[Sample]:
    """Samples listed in a ``MANIFEST.tsv`` (columns :data:`MANIFEST_COLUMNS`, paths
    relative to it), from ``sites`` only (default all) minus ``exclude_sites``.

    A row whose file is missing or whose md5 differs is logged with its path and left
    out; DatasetError if more than ``MAX_BAD_SHARE`` of the chosen rows are, for unknown
    site names (listing the known ones) and for a malformed manifest.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if row["label"] not in FOLDER_LABELS or not row["path"] or not row["site"]:
            raise DatasetError(f"{path}:{line}: needs a path, a site and label yes/no")
    rows = _choose_sites(rows, sites, exclude_sites, path)
    samples, bad = [], []
    for row in rows:
        file = path.parent / row["path"]
        if not file.is_file():
            bad.append(f"{file}: missing")
        elif row["md5"] and _md5(file) != row["md5"]:
            bad.append(f"{file}: md5 differs from the manifest's")
        else:
            samples.append(Sample(file, FOLDER_LABELS[row["label"]], row["path"],
                                  row["site"], row["subject"], row["sequence"],
                                  row["view"], row["license"]))
    for line in bad:
        logger.warning("left out %s", line)
    _check_bad(bad, len(rows), "are missing or altered")
    return samples


@dataclass(frozen=True)
class DataSource:
    """Where a dataset is, and which sites of its manifest to take (default all)."""

    location: Path
    sites: tuple[str, ...] = ()
    exclude_sites: tuple[str, ...] = ()

    def __str__(self) -> str:
        chosen = [f"sites {','.join(self.sites)}"] if self.sites else []
        chosen += [f"without {','.join(self.exclude_sites)}"] if self.exclude_sites else []
        return " ".join([str(self.location), *chosen])


def load_samples(data: str | Path | DataSource) -> list[Sample]:
    """Samples from a manifest (a ``.tsv`` file, or a folder holding ``MANIFEST.tsv``
    with its columns), a dataset folder (``yes/``, ``no/``) or a CSV file; a
    :class:`DataSource` also chooses sites of a manifest (DatasetError elsewhere).
    Files in :data:`NOT_BRAIN_SLICES` are left out.
    """
    if not isinstance(data, DataSource):
        data = DataSource(Path(data))
    location, sites, exclude_sites = Path(data.location), data.sites, data.exclude_sites
    manifest = location / MANIFEST_NAME if location.is_dir() else location
    if manifest.suffix.lower() == ".tsv" and manifest.is_file() and not (
            location.is_dir() and (location / "yes").is_dir()):
        return _without_non_slices(load_manifest(manifest, sites, exclude_sites))
    if sites or exclude_sites:
        raise DatasetError(f"{location}: choosing sites needs a {MANIFEST_NAME}")
    if location.is_dir():
        return _without_non_slices(load_folder(location))
    if location.suffix.lower() == ".csv" and location.is_file():
        return _without_non_slices(load_csv(location))
    raise DatasetError(f"{location}: not a manifest (.tsv), a dataset folder (yes/, no/) "
                       "or a .csv file")


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
    _check_bad([str(s.path) for s, a in zip(samples, arrays) if a is None], len(samples),
               "could not be decoded")
    images = np.stack([a for a in arrays if a is not None])
    labels = np.array([s.label for s in kept], dtype=np.int64)
    return images, labels, kept


def load_grouped(data: str | Path | DataSource, spec: InputSpec
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Sample]]:
    """Images, labels, group ids (patients and duplicates, see
    :func:`models.training.splits.duplicate_groups`) and the samples that loaded, for the
    dataset at ``data``; cached on disk by content (:mod:`models.training.cache`)."""
    from models.core import brain_mask, preprocess as preprocess_module
    from models.training import cache, splits
    samples = load_samples(data)
    key = cache.content_key([s.path for s in samples], [preprocess_module, brain_mask, splits],
                            spec, [(s.rel, s.label, s.site, s.subject) for s in samples])

    def compute() -> dict[str, np.ndarray]:
        images, labels, kept = load_images(samples, spec)
        index = {id(s): i for i, s in enumerate(samples)}
        return {"images": images, "labels": labels,
                "kept": np.array([index[id(s)] for s in kept], np.int64),
                "groups": splits.duplicate_groups(kept)}

    arrays = cache.cached_arrays(key, compute)
    kept = [samples[i] for i in arrays["kept"]]
    logger.info("%d images in %d groups", len(kept), len(np.unique(arrays["groups"])))
    return arrays["images"], arrays["labels"], arrays["groups"], kept
