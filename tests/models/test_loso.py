"""Leave-one-site-out on a small subset of the real manifest, and its calibration and
patient-bootstrap arithmetic."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.training import calibration
from models.training.dataset import MANIFEST_NAME

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sites of the real manifest, a few patients (or Kaggle slices) each."""
    if not (SHARED / MANIFEST_NAME).is_file():
        pytest.skip(f"shared manifest not found at {SHARED}")
    root = tmp_path_factory.mktemp("manifest")
    lines = (SHARED / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    patients = {"site_tcga_lgg_cs": 4, "site_ljubljana_ms": 2}  # and 6 + 6 Kaggle slices
    chosen, taken = [lines[0]], {}
    for line in lines[1:]:
        rel, label, site, subject = line.split("\t")[:4]
        if site == "kaggle_navoneel":
            unit, limit = (site, label), 6
            taken[unit] = taken.get(unit, 0) + 1
            if taken[unit] > limit:
                continue
        elif site in patients:
            who = taken.setdefault(site, set())
            if subject not in who and len(who) == patients[site]:
                continue
            who.add(subject)
        else:
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / rel, root / rel)
        chosen.append(line)
    (root / MANIFEST_NAME).write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_loso_cli_reports_every_held_out_site(small_manifest: Path, tmp_path: Path,
                                              capsys) -> None:
    # Prepare
    from models.__main__ import main
    out = tmp_path / "loso.json"
    # Execute: two epochs, one model per held-out site
    code = main(["loso", "--data", str(small_manifest), "--epochs", "2", "--json", str(out)])
    # Assert
    assert code == 0
    result = json.loads(out.read_text())
    sites = result["sites"]
    assert set(sites) == {"kaggle_navoneel", "site_tcga_lgg_cs", "site_ljubljana_ms"}
    cs, ms = sites["site_tcga_lgg_cs"], sites["site_ljubljana_ms"]
    assert cs["patients"] == 4 and cs["n"] == cs["confusion"]["tp"] + cs["confusion"]["fn"] \
        + cs["confusion"]["tn"] + cs["confusion"]["fp"]
    assert set(cs["ci95"]) == {"auc", "balanced_accuracy", "sensitivity", "specificity"}
    assert cs["ci95"]["specificity"][0] <= cs["specificity"] <= cs["ci95"]["specificity"][1]
    assert set(cs["by_sequence"]) == {"FLAIR", "T1", "T1CE"}
    assert 0 < cs["temperature"] and cs["ece"] is not None
    # A tumour-free site has no AUC or sensitivity: judged by specificity only
    assert ms["tumour"] == 0 and ms["auc"] is None and set(ms["ci95"]) == {"specificity"}
    assert set(result["worst"]) == {"auc", "balanced_accuracy", "sensitivity",
                                    "specificity", "ece"}
    assert len(result["predictions"]) == sum(r["n"] for r in sites.values())
    table = capsys.readouterr().out
    assert "site_ljubljana_ms" in table and "—" in table
    # Rescored at its own threshold, a saved run gives its own figures; at 0 it calls
    # every slice a tumour
    again, zero = tmp_path / "again.json", tmp_path / "zero.json"
    threshold = str(cs["threshold"])
    main(["loso", "--data", str(small_manifest), "--rescore", str(out), "--threshold",
          threshold, "--json", str(again)])
    main(["loso", "--data", str(small_manifest), "--rescore", str(out), "--threshold", "0",
          "--json", str(zero)])
    redone = json.loads(again.read_text())["sites"]["site_tcga_lgg_cs"]
    assert {k: redone[k] for k in ("auc", "balanced_accuracy", "confusion", "ci95")} == \
        {k: cs[k] for k in ("auc", "balanced_accuracy", "confusion", "ci95")}
    assert json.loads(zero.read_text())["sites"]["site_ljubljana_ms"]["specificity"] == 0


def test_loso_refuses_a_held_out_site_the_data_does_not_have(small_manifest: Path) -> None:
    from models.__main__ import main
    assert main(["loso", "--data", str(small_manifest), "--holdout", "nowhere",
                 "--epochs", "1"]) == 2


def test_temperature_scaling_recovers_the_temperature_that_overconfidence_applied():
    # Prepare: labels drawn from calibrated probabilities, then made 3x overconfident
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * true_logit))
    # Execute
    t = calibration.fit_temperature(y, overconfident)
    fixed = calibration.apply_temperature(overconfident, t)
    # Assert
    assert t == pytest.approx(3.0, rel=0.05)
    from models.core.metrics import expected_calibration_error, roc_auc
    assert expected_calibration_error(y, fixed) < 0.02 < expected_calibration_error(
        y, overconfident)
    assert roc_auc(y, fixed) == pytest.approx(roc_auc(y, overconfident))


def test_patient_bootstrap_resamples_whole_patients():
    # Prepare: 10 patients of 20 identical slices each; half the patients misclassified
    y = np.repeat(np.arange(10) % 2, 20)
    groups = np.repeat(np.arange(10), 20)
    prob = np.where(np.repeat(np.arange(10) < 5, 20), y, 1 - y).astype(float)

    def accuracy(yy, pp):
        return float(np.mean((pp >= 0.5) == yy))

    # Execute
    low, high = calibration.patient_bootstrap(y, prob, groups, accuracy, n=500)
    # Assert: 10 patients, not 200 slices, decide the width (about +-0.3, not +-0.07)
    assert low <= 0.5 <= high and high - low > 0.4
