"""The local gate: held-out confirmed cases on which a new bundle must not do worse.

About a quarter of confirmed cases (:func:`is_gate_key`) are never trained on: whole
studies (the slices of one DICOM study, or of one uploaded archive, stay on one side),
and a slice outside any study by its image, so one image file uploaded twice stays on one
side too (an archive uploaded twice is two studies). The side follows from what
the store already keeps, so training and the gate agree without storing anything, and a
simulation that feeds the same images holds out the same cases in every run. A bundle
from the coordinator is refused if, on them, it gets more cases wrong or misses more
tumours than the model in service by more than the margin, or (with enough of each
class) has a lower AUC. Federation reports its before/after accuracy on the same cases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from device.store.base import MAX_LIST_LIMIT, Case, CaseStore
from models.core import metrics

GATE_PREFIXES = "0123"    # first hex digit of a held-out gate key: ~25% of cases
MIN_GATE_CASES = 4        # fewer: the gate is skipped (and the result says so)
MIN_CLASS_CASES = 5       # fewer of either class: AUC is not compared
MAX_GATE_CASES = 300      # newest first; bounds the time a check takes on a Pi
REPORTED = ("n", "accuracy", "auc", "sensitivity", "specificity", "threshold")


def is_gate_key(key: str) -> bool:
    """True if the cases of a gate key (the store's ``gate_keys``: a study's id, else an
    image's SHA-256, both hex) are held out for the local gate (never trained on): its
    first hex digit is in "0123", about a quarter of keys."""
    return isinstance(key, str) and len(key) > 0 and key[0] in GATE_PREFIXES


def held_out(store: CaseStore, case_ids: list[str]) -> np.ndarray:
    """Boolean mask of the gate cases among ``case_ids``."""
    return np.array([is_gate_key(k) for k in store.gate_keys(case_ids)], bool)


def gate_cases(store: CaseStore) -> list[Case]:
    """Held-out cases with a clinician label (agreeing or not), newest first, at most
    :data:`MAX_GATE_CASES`."""
    found: list[Case] = []
    for status in ("confirmed", "disagreed"):  # "disagreed" too, or the gate is biased
        offset = 0
        while True:
            page = store.list(status, limit=MAX_LIST_LIMIT, offset=offset)
            found += [c for c, gate in zip(page, held_out(store, [c.id for c in page]))
                      if gate]
            if len(page) < MAX_LIST_LIMIT:
                break
            offset += len(page)
    found.sort(key=lambda c: (c.created_at, c.id), reverse=True)
    return found[:MAX_GATE_CASES]


@dataclass(frozen=True)
class Verdict:
    """What the gate decided, in words (``figures``) and numbers for the report."""

    passed: bool
    figures: str
    current: dict[str, Any]
    candidate: dict[str, Any]


def judge(y: np.ndarray, p_current: np.ndarray, p_candidate: np.ndarray,
          thresholds: tuple[float, float], margin: float) -> Verdict:
    """Compare the candidate with the model in service on the gate cases' labels ``y``.

    Gate sets are small: counts are judged, not rates. The candidate fails if it gets
    more than ``max(1, margin * n)`` more cases wrong, or misses more than
    ``max(1, margin * n_tumours)`` more tumours (a screening model must not start
    missing them), or, with :data:`MIN_CLASS_CASES` of each class, has an AUC lower by
    more than ``margin``. ``thresholds`` are (current, candidate).
    """
    old = metrics.binary_metrics(y, np.clip(p_current, 0.0, 1.0), thresholds[0])
    new = metrics.binary_metrics(y, p_candidate, thresholds[1])
    c_old, c_new = old["confusion"], new["confusion"]
    n_pos = int(y.sum())
    extra_wrong = (c_new["fp"] + c_new["fn"]) - (c_old["fp"] + c_old["fn"])
    extra_missed = c_new["fn"] - c_old["fn"]
    both_classes = min(n_pos, int(y.size - n_pos)) >= MIN_CLASS_CASES
    figures = (f"accuracy {new['accuracy']:.3f} vs {old['accuracy']:.3f}, missed "
               f"tumours {c_new['fn']} vs {c_old['fn']} of {n_pos}"
               + (f", AUC {new['auc']:.3f} vs {old['auc']:.3f}" if both_classes
                  else f", AUC not compared (fewer than {MIN_CLASS_CASES} of a class)")
               + f" on {y.size} held-out cases (margin {margin})")
    worse = (extra_wrong > max(1.0, margin * y.size)
             or extra_missed > max(1.0, margin * n_pos)
             or (both_classes and new["auc"] < old["auc"] - margin))
    return Verdict(not worse, figures, metrics.json_safe({k: old[k] for k in REPORTED}),
                   metrics.json_safe({k: new[k] for k in REPORTED}))
