"""Leakage-free splitting: duplicate groups, then grouped and stratified partitions.

The Kaggle set holds byte-identical files and re-encoded or rescaled copies of the same
slice. Every split here (folds, train/val/test, the paper's sites, federated sites) takes
a group id per item and never puts one group on two sides. Pure NumPy + OpenCV.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from typing import Any, Sequence

import cv2
import numpy as np

from models.core.preprocess import read_image, to_gray

logger = logging.getLogger(__name__)

FINGERPRINT_SIDE = 32
# Chosen on the 253 real slices: merged pairs (re-encoded, rescaled, recropped copies,
# checked by eye) correlate >= 0.96; the closest distinct slices (different patients, or
# adjacent slices of one patient) reach 0.90. 0.93 sits in the middle of that empty gap.
NEAR_DUPLICATE_CORR = 0.93
_BORDER_LEVEL = 0.1  # a pixel is content above 10% of the image's 99th percentile...
_BORDER_FRAC = 0.01  # ...and a row/column is content when over 1% of it is
MIN_SITE_ITEMS = 2
PAPER_SITES = (("main", 0.6), ("pi1", 0.2), ("pi2", 0.2))
ROLES = ("train", "val", "test")


def fingerprint(gray: np.ndarray, side: int = FINGERPRINT_SIDE) -> np.ndarray:
    """Perceptual fingerprint: a zero-mean, unit-norm thumbnail after trimming borders.

    Parameters
    ----------
    gray : 2-D array (e.g. from :func:`models.core.preprocess.to_gray`).
    side : thumbnail side in pixels.

    Returns
    -------
    (side * side,) float32; the dot product of two is their correlation. All zeros for a
    blank image (it then only matches by exact bytes).
    """
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"fingerprint needs a non-empty 2-D image, got shape {gray.shape}")
    g = np.ascontiguousarray(gray, dtype=np.float32)
    level = _BORDER_LEVEL * float(np.percentile(g, 99))
    mask = g > level
    rows = np.flatnonzero(mask.mean(axis=1) > _BORDER_FRAC)
    cols = np.flatnonzero(mask.mean(axis=0) > _BORDER_FRAC)
    if level > 0 and rows.size > 1 and cols.size > 1:
        g = np.ascontiguousarray(g[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    thumb = cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA).ravel()
    thumb = thumb - thumb.mean()
    norm = float(np.linalg.norm(thumb))
    return (thumb / norm if norm > 1e-6 else np.zeros_like(thumb)).astype(np.float32)


def _describe(item: Any) -> tuple[str, np.ndarray]:
    """(exact-content digest, fingerprint) of an image array, a Sample or a path."""
    if isinstance(item, np.ndarray):
        a = np.ascontiguousarray(item)
        digest = hashlib.sha256(f"{a.shape}{a.dtype}".encode() + a.tobytes()).hexdigest()
        return digest, fingerprint(to_gray(a))
    path = item.path if hasattr(item, "path") else item
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"expected an image array, a Sample or a path, got {type(item)}")
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    try:
        return digest, fingerprint(to_gray(read_image(path)))
    except ValueError as exc:  # undecodable: still grouped with byte-identical copies
        logger.warning("image not decodable (%s); grouped by exact bytes only", exc)
        return digest, np.zeros(FINGERPRINT_SIDE ** 2, np.float32)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components by union-find; ids 0.. in order of first appearance."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]  # path halving
        return i

    for i, j in pairs:
        ri, rj = root(int(i)), root(int(j))
        parent[max(ri, rj)] = min(ri, rj)  # the root is the smallest index: stable ids
    return np.unique([root(i) for i in range(n)], return_inverse=True)[1].astype(np.int64)


def _patient(item: Any) -> str:
    """``site/subject`` of a Sample with a patient id; "" for anything else."""
    subject = getattr(item, "subject", "")
    return f"{getattr(item, 'site', '')}/{subject}" if subject else ""


def duplicate_groups(items: Sequence[Any], threshold: float = NEAR_DUPLICATE_CORR
                     ) -> np.ndarray:
    """Group id per item: one patient, exact copies and near duplicates, merged
    transitively.

    Parameters
    ----------
    items : image arrays, :class:`models.training.dataset.Sample` objects or file paths.
        Files are compared by the SHA-256 of their bytes, arrays by that of their pixels.
        Samples with a patient id (``subject``) are one group per patient; near
        duplicates are looked for only among items without one (the Kaggle set), since
        slices of different patients at one level of the brain correlate above
        ``threshold`` on a 32 px thumbnail (measured on the MS site: up to 0.95).
    threshold : fingerprint correlation at or above which two items are one slice.

    Returns
    -------
    (n,) int64 group ids, 0..n_groups-1 in order of first appearance.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a correlation in [-1, 1], got {threshold}")
    n = len(items)
    if n == 0:
        return np.zeros(0, np.int64)
    digests, prints = zip(*(_describe(item) for item in items))
    patient = np.array([_patient(item) for item in items])
    anonymous = patient == ""
    fps = np.stack(prints)
    near = np.triu((fps @ fps.T) >= threshold, k=1) & np.outer(anonymous, anonymous)
    same = np.unique(np.array(digests), return_inverse=True)[1]
    exact = np.triu(same[:, None] == same[None, :], k=1)
    same_patient = np.triu((patient[:, None] == patient[None, :])
                           & ~np.outer(anonymous, anonymous), k=1)
    groups = _components(n, np.argwhere(near | exact | same_patient))
    logger.info("%d items in %d groups (patients and duplicates; largest %d)", n,
                groups.max() + 1, np.bincount(groups).max())
    return groups


def _encode(labels: Sequence[int], groups: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-item group index and per-group class counts, after validating the inputs."""
    y, g = np.asarray(labels), np.asarray(groups)
    if y.ndim != 1 or g.ndim != 1 or len(y) != len(g) or len(y) == 0:
        raise ValueError(f"labels and groups must be non-empty 1-D arrays of one length, "
                         f"got shapes {y.shape} and {g.shape}")
    y_idx = np.unique(y, return_inverse=True)[1]
    g_idx = np.unique(g, return_inverse=True)[1]
    counts = np.zeros((g_idx.max() + 1, y_idx.max() + 1), np.int64)
    np.add.at(counts, (g_idx, y_idx), 1)
    return g_idx, counts


def _assign(counts: np.ndarray, targets: np.ndarray, rng: np.random.Generator,
            min_items: int = 1) -> np.ndarray:
    """Part per group, greedily matching ``targets`` (parts x classes, in items).

    Groups go largest first (ties in random order) to the part whose per-class deficit,
    weighted by the group's classes, is largest; that step minimises the squared distance
    to the targets. A part left under ``min_items`` then takes the smallest group of the
    fullest part that can spare one.
    """
    n_parts, sizes = len(targets), counts.sum(axis=1)
    if len(sizes) < n_parts or sizes.sum() < min_items * n_parts:
        raise ValueError(f"cannot fill {n_parts} parts with >= {min_items} item(s) each from "
                         f"{len(sizes)} group(s) of {sizes.sum()} item(s)")
    order = rng.permutation(len(sizes))
    order = order[np.argsort(-sizes[order], kind="stable")]
    filled = np.zeros_like(targets, dtype=np.float64)
    part = np.empty(len(sizes), np.int64)
    for gi in order:
        deficit = targets - filled
        # Ties (e.g. all parts empty) go to the part with the most room overall.
        p = np.lexsort((-deficit.sum(axis=1), -(deficit @ counts[gi])))[0]
        part[gi], filled[p] = p, filled[p] + counts[gi]
    for _ in range(len(sizes) * n_parts):
        load = np.bincount(part, weights=sizes, minlength=n_parts)
        needy = int(np.argmin(load))
        if load[needy] >= min_items:
            return part
        movable = [(sizes[gi], -load[part[gi]], gi) for gi in range(len(sizes))
                   if load[part[gi]] - sizes[gi] >= min_items]
        if not movable:
            break
        part[min(movable)[2]] = needy
    raise ValueError(f"groups too large to give each of {n_parts} parts {min_items} item(s)")


def _split(labels: Sequence[int], groups: Sequence[int], weights: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Part per item for parts of relative size ``weights``, stratified by label."""
    g_idx, counts = _encode(labels, groups)
    targets = np.outer(weights / weights.sum(), counts.sum(axis=0))
    return _assign(counts, targets, rng)[g_idx]


def stratified_group_kfold(labels: Sequence[int], groups: Sequence[int], k: int = 5,
                           seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per item; groups whole, label ratio and size balanced."""
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    n_groups = len(np.unique(np.asarray(groups)))
    if n_groups < k:
        raise ValueError(f"cannot make {k} folds from {n_groups} duplicate group(s)")
    return _split(labels, groups, np.ones(k), np.random.default_rng(seed))


def train_val_test_split(labels: Sequence[int], groups: Sequence[int],
                         fractions: Sequence[float] = (0.70, 0.15, 0.15),
                         seed: int = 0, strata: Sequence[str] | None = None) -> np.ndarray:
    """"train"/"val"/"test" per item, grouped and stratified, at ``fractions``; with
    ``strata`` (a site per item), within each stratum, so that a site of many small
    groups is not sent mostly to validation and test to balance one of large groups."""
    weights = np.asarray(fractions, dtype=np.float64)
    if weights.shape != (3,):
        raise ValueError(f"fractions needs 3 values (train, val, test), got {fractions}")
    if not (np.all(weights > 0) and abs(weights.sum() - 1) < 1e-6):
        raise ValueError(f"fractions must be positive and sum to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    if strata is None:
        return np.array(ROLES)[_split(labels, groups, weights, rng)]
    y, g, strata = np.asarray(labels), np.asarray(groups), np.asarray(strata)
    part = np.zeros(len(y), dtype=int)
    for stratum in sorted(set(strata)):
        sel = strata == stratum
        part[sel] = _split(y[sel], g[sel], weights, rng)
    return np.array(ROLES)[part]


def paper_partition(labels: Sequence[int], groups: Sequence[int], seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The seed paper's setup: main model 60%, two Raspberry Pis 20% each.

    Returns
    -------
    sites : "main"/"pi1"/"pi2" per item.
    roles : "train"/"val"/"test" per item, split within each site.
    """
    names, weights = zip(*PAPER_SITES)
    y, g = np.asarray(labels), np.asarray(groups)
    rng = np.random.default_rng(seed)
    site = _split(y, g, np.array(weights), rng)
    roles = np.empty(len(y), dtype="<U5")
    for s, name in enumerate(names):
        sel = site == s
        try:
            roles[sel] = train_val_test_split(y[sel], g[sel], seed=int(rng.integers(2 ** 31)))
        except ValueError as exc:
            raise ValueError(f"site {name}: {exc}") from exc
    return np.array(names)[site], roles


def site_partition(labels: Sequence[int], groups: Sequence[int], n_sites: int,
                   scheme: str = "iid", alpha: float = 0.5, size_skew: float = 0.0,
                   seed: int = 0) -> np.ndarray:
    """Site index (0..n_sites-1) per item for federated simulations.

    Parameters
    ----------
    scheme : "iid" (every site has the overall label ratio) or "dirichlet" (label skew:
        per class, site shares drawn from Dirichlet(alpha); small alpha = strong skew).
    size_skew : 0 for equal site sizes; s > 0 gives power-law sizes 1, 1/2^s, 1/3^s, ...
        in a seed-dependent order.

    Every site gets at least ``MIN_SITE_ITEMS`` items (whole groups moved from the
    fullest site if needed); ValueError when the groups cannot allow it.
    """
    if not isinstance(n_sites, (int, np.integer)) or n_sites < 1:
        raise ValueError(f"n_sites must be an integer >= 1, got {n_sites!r}")
    if scheme not in ("iid", "dirichlet"):
        raise ValueError(f"scheme must be 'iid' or 'dirichlet', got {scheme!r}")
    if not (math.isfinite(alpha) and alpha > 0 and math.isfinite(size_skew) and size_skew >= 0):
        raise ValueError(f"need finite alpha > 0 and size_skew >= 0, got {alpha!r}, {size_skew!r}")
    g_idx, counts = _encode(labels, groups)
    rng = np.random.default_rng(seed)
    size = rng.permutation(np.arange(1, n_sites + 1) ** -float(size_skew))
    share = np.ones((n_sites, counts.shape[1]))
    if scheme == "dirichlet":
        share = rng.dirichlet(np.full(n_sites, alpha), size=counts.shape[1]).T
    share = share * size[:, None]
    targets = share / share.sum(axis=0) * counts.sum(axis=0)
    site = _assign(counts, targets, rng, MIN_SITE_ITEMS)[g_idx]
    logger.debug("site sizes %s", np.bincount(site, minlength=n_sites).tolist())
    return site


def parse_partition(spec: str) -> tuple[str, float | None]:
    """Parse a CLI partition spec: "paper", "iid", "dirichlet" or "dirichlet:ALPHA".

    Returns
    -------
    (scheme, alpha); alpha is None except for "dirichlet" (default 0.5).
    """
    name, sep, arg = str(spec).strip().lower().partition(":")
    if name in ("paper", "iid") and not sep:
        return name, None
    if name == "dirichlet":
        with contextlib.suppress(ValueError):
            alpha = float(arg) if sep else 0.5
            if math.isfinite(alpha) and alpha > 0:
                return name, alpha
    raise ValueError(f"bad partition {spec!r}: use 'paper', 'iid', 'dirichlet' or "
                     f"'dirichlet:ALPHA' with ALPHA > 0 (e.g. 'dirichlet:0.5')")


def clinic_split(groups: np.ndarray, sites: np.ndarray, clinics: Sequence[str], seed: int
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per clinic: its cases in arrival order, and its test part (whole patients)."""
    rng = np.random.default_rng(seed)
    parts = {}
    for clinic in clinics:
        idx = np.flatnonzero(sites == clinic)
        if not len(idx):
            raise ValueError(f"the data has no site {clinic!r}")
        patients = np.unique(groups[idx])
        rng.shuffle(patients)
        test = np.isin(groups[idx], patients[:max(2, len(patients) // 3)])
        parts[clinic] = (rng.permutation(idx[~test]), idx[test])
    return parts
