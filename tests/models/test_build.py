"""The records a built bundle carries: its data and licences, per-site test figures and
the leave-one-site-out summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.training.build import data_record, loso_summary, per_site
from models.training.dataset import Sample


def test_a_non_commercial_site_binds_the_model_and_says_so():
    # Prepare
    kept = [Sample(Path(f"{i}.png"), i % 2, f"{i}.png", site, "", "", "", lic)
            for i, (site, lic) in enumerate([("tcga", "CC BY-NC-SA 4.0")] * 3
                                            + [("ms", "CC-BY")] * 2)]
    role = np.array(["train", "test", "train", "train", "val"])
    # Execute
    record = data_record(kept, role)
    # Assert
    assert record["sites"]["tcga"] == {"slices": 3, "tumour": 1, "train": 2,
                                       "license": "CC BY-NC-SA 4.0"}
    assert record["noncommercial"] is True
    assert "tcga" in record["license_note"] and "must not be used commercially" in \
        record["license_note"]
    assert data_record(kept[3:], role[3:])["license_note"] == ""


def test_per_site_figures_leave_out_sites_too_small_to_mean_anything():
    y = np.array([0, 1] * 10 + [1] * 5)
    prob = np.where(y == 1, 0.9, 0.1)
    sites = np.array(["big"] * 20 + ["tiny"] * 5)
    out = per_site(y, prob, sites, 0.5)
    assert list(out) == ["big"] and out["big"]["auc"] == 1.0 and out["big"]["n"] == 20


def test_the_loso_summary_keeps_figures_and_drops_per_file_predictions(tmp_path):
    result = {"arch": "edge", "config": {"epochs": 60, "seed": 1}, "worst": {"auc": 0.8},
              "predictions": {"a.png": 0.3},
              "sites": {"s": {"n": 10, "auc": 0.8, "ci95": {"auc": [0.7, 0.9]},
                              "reliability": {"count": [1]}, "validation": {}}}}
    (tmp_path / "loso.json").write_text(json.dumps(result))
    summary = loso_summary(tmp_path / "loso.json")
    assert summary == {"arch": "edge", "epochs": 60, "seed": 1, "worst": {"auc": 0.8},
                       "sites": {"s": {"n": 10, "auc": 0.8, "ci95": {"auc": [0.7, 0.9]}}}}
    assert loso_summary(None) is None
