"""models adapt-modes on two real TCGA sites, one round: every mode reports each clinic,
and the initial row is the Keras model's own figure on the same held-out patients."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models.__main__ import main
from models.core import metrics
from tests.conftest import DATA

SHARED = DATA.parent
CLINICS = ["site_tcga_lgg_cs", "site_tcga_lgg_fg"]


@pytest.mark.slow
def test_two_clinics_one_round_report_every_mode_per_clinic(trained_bundle, tmp_path):
    if not (SHARED / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared manifest not found at {SHARED}")
    from models.training.splits import clinic_split
    from models.training.architectures import ARCHITECTURES, build_model
    from models.training.dataset import load_grouped
    from models.training.train import predict
    out = tmp_path / "modes.json"
    # Execute
    code = main(["adapt-modes", "--data", str(SHARED), "--weights", str(trained_bundle[1]),
                 "--threshold", "0.5", "--clinics", ",".join(CLINICS),
                 "--cases-per-round", "10", "--rounds", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    # Assert: the initial model, then each mode with federated, local and pooled figures
    assert code == 0
    assert [r["mode"] for r in rows] == ["initial", "head", "fedbn", "lora", "adapter", "block"]
    for row in rows[1:]:
        assert set(row["per_clinic"]) == set(row["per_clinic_local"]) == set(CLINICS)
        assert all(0 <= v <= 1 for v in [*row["per_clinic"].values(), row["local"],
                                         *row["central"].values()])
    everything = load_grouped(SHARED, ARCHITECTURES["edge"].input_spec)
    sites = np.array([s.site for s in everything[3]])
    parts = clinic_split(everything[2], sites, CLINICS, 0)
    model = build_model("edge")
    model.load_weights(trained_bundle[1])
    for clinic, (_, test) in parts.items():
        prob = predict(model, everything[0][test])
        expected = metrics.binary_metrics(everything[1][test], prob, 0.5)
        assert rows[0]["per_clinic"][clinic] == pytest.approx(
            expected["balanced_accuracy"], abs=0.02)
    # The MS site never joins: its specificity, the initial model's as Keras has it
    unseen = np.flatnonzero(sites == "site_ljubljana_ms")
    assert rows[0]["holdout_specificity"] == pytest.approx(
        np.mean(predict(model, everything[0][unseen]) < 0.5), abs=0.02)
    assert all(0 <= row["holdout_specificity"] <= 1 for row in rows)


@pytest.mark.slow
def test_cases_held_out_for_the_gate_are_never_trained_on(trained_bundle, tmp_path):
    """Replaying the appliances: with every case held out for the local gate no clinic
    can train, so the federation ends where it began, while alone and pooled still train
    on every case; the summary's differences are those of the rows."""
    if not (SHARED / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared manifest not found at {SHARED}")
    from models.core.head_training import TrainConfig
    from models.training.adaptation_modes import Replay, compare, summary
    # Execute
    rows = compare(SHARED, trained_bundle[1], 0.5, CLINICS, seeds=[0, 1], rounds=1,
                   modes=["head"], replay=Replay(TrainConfig(epochs=5), gate_share=1.0,
                                                 rounds_per_arrival=2))
    # Assert
    initial = {r["seed"]: r for r in rows if r["mode"] == "initial"}
    heads = [r for r in rows if r["mode"] == "head"]
    assert sorted(initial) == [r["seed"] for r in heads] == [0, 1]
    for row in heads:
        assert row["per_clinic"] == initial[row["seed"]]["per_clinic"]
        assert set(row["per_clinic_local"]) == set(row["central"]) == set(CLINICS)
    (mean,) = summary(rows)
    assert mean["seeds"] == 2 and mean["federated"] == mean["initial"]
    assert mean["federated_minus_initial"] == 0
    # Each figure is rounded to 4 decimals: a difference of two rounded means may be off
    # by up to 1.5e-4 from the rounded mean of the differences.
    assert mean["federated_minus_alone"] == pytest.approx(
        np.mean([r["mean"] - r["local"] for r in heads]), abs=2e-4)
    assert mean["pooled_minus_alone"] == pytest.approx(
        mean["pooled"] - mean["alone"], abs=2e-4)
    assert mean["holdout_specificity_federated"] == mean["holdout_specificity_initial"]


@pytest.mark.parametrize("text, seeds", [("3", [3]), ("0-2", [0, 1, 2])])
def test_seed_ranges(text, seeds):
    from models.__main__ import seed_range
    assert seed_range(text) == seeds


@pytest.mark.parametrize("option, value", [
    ("--seed", ""), ("--seed", "a"), ("--seed", "3-1"), ("--seed", "1-b"),
    ("--gate-share", "1.5"), ("--gate-share", "-0.1"), ("--gate-share", "x"),
    ("--modes", "head,lorax"), ("--modes", ","), ("--sparsity", "1"), ("--sparsity", "-1"),
])
def test_bad_replay_options_are_refused_before_any_work(option, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["adapt-modes", "--data", "/nonexistent", "--weights", "w.h5",
              "--threshold", "0.5", option, value])
    assert stop.value.code == 2 and option in capsys.readouterr().err


def test_the_replay_prunes_the_averaged_head_as_a_publication_does():
    """The hidden kernel loses its smallest-magnitude half; the output layer and the
    biases stay whole; no pruning leaves the head as it was."""
    from models.training.adaptation_modes import Replay
    rng = np.random.default_rng(0)
    head = {"hidden/kernel": rng.normal(size=(8, 4)), "hidden/bias": rng.normal(size=4),
            "output/kernel": rng.normal(size=(4, 1)), "output/bias": np.zeros(1)}
    # Execute
    pruned = Replay(sparsity=0.5).prune(head)
    kept = Replay().prune(head)
    # Assert
    kernel = pruned["hidden/kernel"]
    assert np.count_nonzero(kernel) == 16
    assert np.abs(kernel[kernel != 0]).min() > np.abs(head["hidden/kernel"][kernel == 0]).max()
    np.testing.assert_array_equal(kernel[kernel != 0], head["hidden/kernel"][kernel != 0])
    for name in ("hidden/bias", "output/kernel", "output/bias"):
        np.testing.assert_array_equal(pruned[name], head[name])
    assert all(np.array_equal(kept[n], head[n]) for n in head)


def test_a_summary_without_the_held_out_site_says_so():
    from models.training.adaptation_modes import summary
    row = {"per_clinic": {"a": 0.6}, "per_clinic_local": {"a": 0.5}, "mean": 0.6,
           "local": 0.5, "central_mean": 0.7}
    results = [{"mode": "initial", "seed": 0, "mean": 0.4, "holdout_specificity": None},
               {**row, "mode": "head", "seed": 0, "holdout_specificity": None},
               {"mode": "initial", "seed": 1, "mean": 0.4, "holdout_specificity": 0.8},
               {**row, "mode": "head", "seed": 1, "holdout_specificity": 0.6}]
    # Execute
    (everything,) = summary(results)
    (second,) = summary(results[2:])
    # Assert
    assert everything["holdout_specificity_federated"] is None
    assert everything["federated_minus_initial"] == pytest.approx(0.2)
    assert second["holdout_specificity_initial"] == 0.8
    assert second["holdout_specificity_federated"] == 0.6


def test_the_held_out_site_cannot_be_a_clinic():
    from models.training.adaptation_modes import HOLDOUT, compare
    with pytest.raises(ValueError, match="must never join"):
        compare("/nonexistent", "w.h5", 0.5, clinics=["site_tcga_lgg_cs", HOLDOUT])
