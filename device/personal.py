"""This clinic's own head, served instead of the federation's where it does better here.

After each training run an appliance with ``personalise = true`` compares the head it
trained on its own confirmed cases with the head of the bundle in service, on its
held-out (gate) cases (:mod:`device.gate`: never trained on). It serves its own head only
if that gets fewer of them wrong and misses no more tumours, with at least
:data:`~device.gate.MIN_GATE_CASES` of them; otherwise it serves (or goes back to) the
bundle's head. Its own head is dropped when a new bundle version is installed (it was
trained from the old one), when an administrator asks for the global model, or when its
file does not match the bundle in service. Each case records which head made it
(``cases.head``: the personal head's id, or nothing for the bundle's).

Only the head is personalised: the backbone, and so the embeddings the federation
trains on, stay the bundle's. A bundle with a last-block adapter is not personalised.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from device.gate import MIN_GATE_CASES
from device.inference.predictor import Predictor
from device.inference.slot import ModelSlot
from models.core import head as H
from models.core import metrics, weights
from models.core.files import write_atomic

logger = logging.getLogger(__name__)
HEAD_FILE, INFO_FILE = "personal-head.npz", "personal-head.json"


@dataclass(frozen=True)
class Comparison:
    """Both heads on the clinic's held-out cases: how many, wrong, tumours missed."""

    n: int
    wrong_global: int
    wrong_personal: int
    missed_global: int
    missed_personal: int

    @property
    def personal_is_better(self) -> bool:
        return self.n >= MIN_GATE_CASES and self.wrong_personal < self.wrong_global \
            and self.missed_personal <= self.missed_global

    def words(self) -> str:
        return (f"on {self.n} held-out cases: {self.wrong_personal} wrong with this "
                f"clinic's head, {self.wrong_global} with the global one (tumours missed "
                f"{self.missed_personal} and {self.missed_global})")


def compare(y: np.ndarray, p_global: np.ndarray, p_personal: np.ndarray,
            threshold: float) -> Comparison:
    """Both heads' errors on the held-out cases; none yet (a clinic's first cases) is a
    comparison of 0 cases, not an error."""
    if len(y) == 0:
        return Comparison(0, 0, 0, 0, 0)
    counts = [metrics.binary_metrics(y, p, threshold)["confusion"]
              for p in (p_global, p_personal)]
    return Comparison(int(len(y)), *(c["fp"] + c["fn"] for c in counts),
                      *(c["fn"] for c in counts))


@dataclass(frozen=True)
class PersonalHead:
    """A head this clinic trained, and what it was trained from and judged on."""

    head: dict
    id: str              # first 12 hex of the SHA-256 of its arrays
    base_version: int    # the bundle version it was trained from
    bundle_id: str       # that very bundle (the shipped v1 is not the coordinator's v1)
    trained_at: float
    examples: int
    comparison: Comparison


class PersonalPredictor(Predictor):
    """The bundle's model with this clinic's head on its embeddings."""

    def __init__(self, base: Predictor, personal: PersonalHead) -> None:
        super().__init__(base.bundle)
        self.base, self.personal = base, personal

    @property
    def global_predictor(self) -> Predictor:
        return self.base

    def probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, emb = self.base.probabilities(images)
        return H.predict(self.personal.head, emb).astype(np.float32), emb

    def occlusion_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, emb = self.base.occlusion_outputs(images)
        return H.predict(self.personal.head, emb).astype(np.float32), emb


class PersonalHeads:
    """The personal head of an appliance, in ``folder`` (its federation state)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, personal: PersonalHead) -> None:
        info = {k: v for k, v in asdict(personal).items() if k != "head"}
        write_atomic(self.folder / HEAD_FILE, weights.arrays_to_bytes(personal.head))
        write_atomic(self.folder / INFO_FILE, json.dumps(info).encode())

    def load(self, base: Predictor) -> PersonalHead | None:
        """The saved head if it was trained from ``base``'s bundle and is sound; else
        None (and a mismatched or damaged one is dropped, with a log line)."""
        if not (self.folder / INFO_FILE).exists():
            return None
        try:
            info = json.loads((self.folder / INFO_FILE).read_text())
            head = weights.load_arrays((self.folder / HEAD_FILE).read_bytes(),
                                       base.bundle.head_shapes)
            personal = PersonalHead(head=head, **{**info, "comparison": Comparison(
                **info["comparison"])})
            if head_id(head) != personal.id:
                raise ValueError("its arrays are not the ones recorded")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self.discard(f"unreadable ({type(exc).__name__}: {exc})")
            return None
        if (personal.base_version, personal.bundle_id) != (base.version, bundle_id(base)):
            self.discard(f"trained from v{personal.base_version}, v{base.version} serves")
            return None
        return personal

    def discard(self, reason: str) -> bool:
        """Remove the saved head; True if there was one."""
        found = False
        for name in (INFO_FILE, HEAD_FILE):
            try:
                (self.folder / name).unlink()
                found = True
            except FileNotFoundError:
                pass
        if found:
            logger.info("this clinic's own head dropped: %s", reason)
        return found


def bundle_id(predictor: Predictor) -> str:
    manifest = json.dumps(predictor.bundle.manifest, sort_keys=True).encode()
    return hashlib.sha256(manifest).hexdigest()[:16]


def head_id(head: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(head):
        digest.update(name.encode() + np.ascontiguousarray(head[name], "<f4").tobytes())
    return digest.hexdigest()[:12]


def new_personal(base: Predictor, head: dict, examples: int,
                 comparison: Comparison) -> PersonalHead:
    return PersonalHead({k: np.asarray(v, np.float32) for k, v in head.items()},
                        head_id(head), base.version, bundle_id(base), time.time(),
                        int(examples), comparison)


class Personalisation:
    """Which head ``slot`` serves: the bundle's, or this clinic's own (saved in
    ``folder``) where it does better here."""

    def __init__(self, slot: ModelSlot, folder: Path) -> None:
        self.slot, self.heads = slot, PersonalHeads(folder)

    def restore(self) -> PersonalHead | None:
        """At start: serve the saved head if it was trained from the bundle in service."""
        base = self.slot.current.global_predictor
        personal = self.heads.load(base)
        if personal is not None and self.slot.replace(
                lambda current: PersonalPredictor(base, personal) if current is base else None):
            logger.info("serving this clinic's own head %s on v%d", personal.id,
                        base.version)
        return personal

    def after_training(self, base: Predictor, start: dict, trained: dict, x_gate: np.ndarray,
                       y_gate: np.ndarray, examples: int) -> dict:
        """Serve ``trained`` (a head trained from ``base``'s ``start`` on this clinic's
        cases) if it does better on the held-out cases ``x_gate``/``y_gate``; otherwise
        serve the bundle's head. What was decided, with the figures."""
        comparison = compare(y_gate, H.predict(start, x_gate), H.predict(trained, x_gate),
                             base.threshold)
        if comparison.personal_is_better:
            personal = new_personal(base, trained, examples, comparison)
            self.heads.save(personal)
            # Only on the bundle it was trained from: an install may have come meanwhile.
            if not self.slot.replace(lambda current: PersonalPredictor(base, personal)
                                     if current.global_predictor is base else None):
                self.heads.discard("a new version was installed during the training run")
                return {"served": "global", "reason": "a new version was installed "
                        "during the training run", **asdict(comparison)}
            served = "personal"
        else:
            self.serve_global(f"not better here: {comparison.words()}")
            served = "global"
        logger.info("serving the %s head: %s", "clinic's own" if served == "personal"
                    else "global", comparison.words())
        return {"served": served, **asdict(comparison)}

    def serve_global(self, reason: str) -> bool:
        """Drop the clinic's own head and serve the bundle's; True if one was served or
        saved."""
        dropped = self.heads.discard(reason)
        return self.slot.replace(lambda current: current.global_predictor) or dropped
