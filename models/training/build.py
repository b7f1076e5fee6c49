"""From a dataset to a signed bundle: split, train, calibrate, prune, int8-quantize, fit
the "not a slice" check, evaluate, sign."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from nacl.signing import SigningKey

from models.core import metrics
from models.core.bundle import write_bundle
from models.core.preprocess import InputSpec
from models.core.runtime import BundleModel, TFLiteModel
from models.training import calibration, ood
from models.training.architectures import (divide_logit, get_architecture, get_block,
                                           get_head)
from models.training.compress import prune, sparsity_of
from models.training.dataset import DataSource, Sample, load_grouped
from models.training.export import gzip_size, to_tflite
from models.training.splits import train_val_test_split
from models.training.train import TrainConfig, operating_threshold, predict, recipe, train_model

logger = logging.getLogger(__name__)

# Probabilities within this many logits of the threshold are shown as "uncertain" on the
# device: 0.35-0.65 around a threshold of 0.5, 0.15-0.38 around 0.25.
UNCERTAIN_LOGIT_BAND = round(math.log(0.65 / 0.35), 4)
SPLIT = (0.8, 0.1, 0.1)  # train / validation (calibration, thresholds) / test
NEGATIVES_PER_CATEGORY = 150
NONCOMMERCIAL = "NC"  # licences with this tag forbid commercial use of derived models


@dataclass
class BuildConfig:
    """What to build: architecture, pruning target and training hyper-parameters."""

    arch: str = "edge"
    sparsity: float = 0.5
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def for_arch(cls, arch: str, epochs: int | None = None, seed: int = 0,
                 overrides: dict[str, str] | None = None) -> "BuildConfig":
        """``arch`` with its own training recipe and pruning target."""
        return cls(arch, get_architecture(arch).sparsity, recipe(arch, seed, epochs, overrides))


@dataclass
class Trained:
    """A model trained on the grouped train split, with the data and split it used."""

    model: keras.Model
    x: np.ndarray
    y: np.ndarray
    kept: list[Sample]
    role: np.ndarray

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(self.role == name)
        return self.x[idx], self.y[idx]

    def sites(self, name: str) -> np.ndarray:
        return np.array([s.site for s, r in zip(self.kept, self.role) if r == name])


def train_on_split(data: str | Path | DataSource, arch: str, cfg: TrainConfig,
                   verbose: int = 0) -> Trained:
    """Train ``arch`` on the train part of a grouped (patients, duplicates) :data:`SPLIT`,
    stratified by label within each site."""
    x, y, groups, kept = load_grouped(data, get_architecture(arch).input_spec)
    role = train_val_test_split(y, groups, fractions=SPLIT, seed=cfg.seed,
                                strata=[s.site for s in kept])
    trained = Trained(None, x, y, kept, role)  # type: ignore[arg-type]
    trained.model, _, _ = train_model(arch, *trained.part("train"), *trained.part("val"),
                                      cfg, verbose, sites=trained.sites("train"))
    return trained


def data_record(kept: list[Sample], role: np.ndarray) -> dict:
    """What the model learned from, by site: slices, tumours, licence; and whether a
    non-commercial licence binds every model derived from it."""
    sites: dict[str, dict] = {}
    for s, r in zip(kept, role):
        site = sites.setdefault(s.site or "dataset", {"slices": 0, "tumour": 0, "train": 0,
                                                      "license": s.license or "unknown"})
        site["slices"] += 1
        site["tumour"] += s.label
        site["train"] += int(r == "train")
    noncommercial = sorted(k for k, v in sites.items() if NONCOMMERCIAL in v["license"])
    note = (f"Trained on {', '.join(noncommercial)} under a non-commercial licence: this "
            "model and every model derived from it must not be used commercially."
            if noncommercial else "")
    return {"sites": sites, "noncommercial": bool(noncommercial), "license_note": note}


def per_site(y: np.ndarray, prob: np.ndarray, sites: np.ndarray, threshold: float) -> dict:
    """Held-out figures of each site with enough slices to mean something (>= 10)."""
    out = {}
    for site in sorted(set(sites)):
        sel = sites == site
        if sel.sum() >= 10:
            m = metrics.binary_metrics(y[sel], prob[sel], threshold)
            out[site] = {k: m[k] for k in ("n", "auc", "balanced_accuracy", "sensitivity",
                                           "specificity", "ece")}
    return out


def loso_summary(path: str | Path | None) -> dict | None:
    """The per-site figures of a ``python -m models loso --json`` run, without the
    per-file predictions, for the manifest and the model card."""
    if path is None:
        return None
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    keep = ("n", "patients", "tumour", "auc", "balanced_accuracy", "sensitivity",
            "specificity", "ece", "ece_uncalibrated", "threshold", "ci95", "by_sequence")
    return {"arch": result["arch"], "epochs": result["config"]["epochs"],
            "seed": result["config"]["seed"], "worst": result["worst"],
            "sites": {s: {k: r[k] for k in keep if k in r} for s, r in result["sites"].items()}}


def fit_slice_check(lite: BundleModel, t: Trained, spec: InputSpec, seed: int
                    ) -> tuple[dict | None, float, dict]:
    """The slice head (trained on training slices and drawn negatives), its threshold
    (refusing at most :data:`ood.MAX_REFUSED` of validation slices) and its report on
    the test slices of each site and on negatives drawn with another seed. No head (and
    the reason) with fewer than :data:`ood.MIN_VALIDATION_SLICES` validation slices."""
    if (n_val := int((t.role == "val").sum())) < ood.MIN_VALIDATION_SLICES:
        reason = (f"not shipped: {n_val} validation slices, fewer than "
                  f"{ood.MIN_VALIDATION_SLICES} to place its threshold")
        logger.warning("slice check %s", reason)
        return None, 0.0, {"shipped": False, "reason": reason}
    neg_train, _ = ood.negative_inputs(NEGATIVES_PER_CATEGORY, spec, seed + 1)
    neg_eval, cats = ood.negative_inputs(NEGATIVES_PER_CATEGORY // 3, spec, seed + 2)
    emb = {r: lite.predict(t.part(r)[0])[1] for r in ("train", "val", "test")}
    head = ood.fit_slice_head(emb["train"], lite.predict(neg_train)[1], seed)
    threshold = ood.refusal_threshold(head, emb["val"])
    sites = t.sites("test")
    report = ood.refusal_report(
        head, threshold, {f"test {s}": emb["test"][sites == s] for s in sorted(set(sites))},
        lite.predict(neg_eval)[1], cats)
    return head, threshold, report


def _training_record(cfg: BuildConfig, t: Trained, tflite: bytes, temperature: float
                     ) -> dict:
    """The manifest's ``training``: recipe, compression, calibration and the split."""
    return {
        "config": cfg.train.to_dict(), "sparsity": round(sparsity_of(t.model), 4),
        "calibration": {"temperature": round(temperature, 4), "method": "temperature "
                        "scaling on the validation split, folded into the output layer"},
        "format": "int8", "model_bytes": len(tflite), "model_gzip_bytes": gzip_size(tflite),
        "split": {"method": "grouped (patients, duplicates) stratified "
                            + "/".join(f"{f:.0%}" for f in SPLIT), "seed": cfg.train.seed,
                  "counts": {r: int((t.role == r).sum()) for r in ("train", "val", "test")},
                  "test_files": sorted(s.rel for s, r in zip(t.kept, t.role)
                                       if r == "test")},
    }


def build_bundle(data: str | Path | DataSource, out: str | Path, key: SigningKey,
                 cfg: BuildConfig, verbose: int = 0, float_out: str | Path | None = None,
                 loso: str | Path | None = None) -> dict:
    """Train ``cfg.arch`` on a grouped :data:`SPLIT` of ``data`` and write bundle version 1.

    The temperature fitted on the validation split is folded into the output layer; the
    model is pruned to ``cfg.sparsity`` (distilled from the calibrated model) and
    int8-quantized; the threshold is the recipe's (or chosen on validation with the
    int8 model); the slice check is fitted on the int8 model's embeddings. Test figures
    come from the test split, which no slice of a training patient or duplicate reaches;
    its files are listed in the manifest. ``loso`` adds the per-site figures of a
    leave-one-site-out run. ``float_out`` keeps the float Keras weights the coordinator
    rebuilds from.
    """
    t = train_on_split(data, cfg.arch, cfg.train, verbose)
    (x_tr, _), (x_va, y_va), (x_te, y_te) = (t.part(r) for r in ("train", "val", "test"))
    temperature = 1.0  # a validation split of one class (a tiny dataset) cannot fit one
    if len(np.unique(y_va)) == 2:
        temperature = calibration.fit_temperature(y_va, predict(t.model, x_va))
    divide_logit(t.model, temperature)
    float_test = predict(t.model, x_te)
    prune(t.model, cfg.sparsity, x_tr, cfg.train)
    tflite = to_tflite(t.model, "int8", calibration=x_tr)
    head, block = get_head(t.model), get_block(t.model)
    lite = BundleModel(TFLiteModel(tflite), head, block)  # what a device runs
    val_prob, test_prob = lite.predict(x_va)[0], lite.predict(x_te)[0]
    threshold = operating_threshold(cfg.train, y_va, val_prob)
    test = metrics.binary_metrics(y_te, test_prob, threshold)
    test["agreement_with_float"] = float(np.mean((test_prob >= threshold)
                                                 == (float_test >= threshold)))
    spec = get_architecture(cfg.arch).input_spec
    slice_head, slice_threshold, slice_report = fit_slice_check(lite, t, spec, cfg.train.seed)
    fields = {
        "version": 1, "parent_version": None, "architecture": cfg.arch,
        "input": spec.to_dict(),
        "threshold": round(float(threshold), 6), "uncertain_logit_band": UNCERTAIN_LOGIT_BAND,
        **({"slice_check": {"file": "slice_head.npz", "threshold": round(slice_threshold, 6)}}
           if slice_head is not None else {}),
        **({"block": {"file": "block.npz", "input": list(lite.lite.feature_shape),
                      "channels": int(block["block/gamma"].size), "adapter_rank": 0}}
           if block is not None else {}),
        "data": data_record(t.kept, t.role),
        "metrics": metrics.json_safe({
            "test": test, "test_by_site": per_site(y_te, test_prob, t.sites("test"), threshold),
            "validation": metrics.binary_metrics(y_va, val_prob, threshold),
            "slice_check": slice_report, "leave_one_site_out": loso_summary(loso)}),
        "training": _training_record(cfg, t, tflite, temperature),
    }
    manifest = write_bundle(out, tflite, head, fields, key, slice_head=slice_head, block=block)
    if float_out:
        t.model.save_weights(str(float_out))
    logger.info("bundle v1: test accuracy %.3f AUC %.3f sensitivity %.3f, %d bytes",
                test["accuracy"], test["auc"], test["sensitivity"], len(tflite))
    return manifest
