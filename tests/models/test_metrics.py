"""Hand-computed checks for models.core.metrics (label 1 = tumour)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from models.core import metrics as m

NAN = float("nan")


# --- AUC and ROC -------------------------------------------------------------------

def test_auc_hand_computed() -> None:
    # positive/negative pairs: (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert m.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auc_ties_count_half() -> None:
    assert m.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    # pairs: 0.5>0.2 (1), 0.5=0.5 (0.5), 0.9>0.2 (1), 0.9>0.5 (1) -> 3.5/4
    assert m.roc_auc([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(0.875)


def test_auc_perfect_inverted_and_constant() -> None:
    y = [0, 0, 0, 1, 1]
    assert m.roc_auc(y, [0.1, 0.2, 0.3, 0.7, 0.9]) == 1.0
    assert m.roc_auc(y, [0.9, 0.8, 0.7, 0.2, 0.1]) == 0.0
    assert m.roc_auc(y, [0.4] * 5) == pytest.approx(0.5)


def test_auc_accepts_any_finite_scores() -> None:
    assert m.roc_auc([0, 1, 0, 1], [-3.0, 2.0, 0.5, 7.0]) == 1.0


def test_auc_single_class_is_nan() -> None:
    assert math.isnan(m.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(m.roc_auc([0, 0], [0.2, 0.5]))


def test_roc_curve_hand_computed() -> None:
    fpr, tpr, thr = m.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])


def test_roc_curve_area_matches_rank_auc() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = np.r_[0, 1, rng.integers(0, 2, 30)]
        s = np.round(rng.random(y.size), 1)  # many ties
        fpr, tpr, _ = m.roc_curve(y, s)
        assert np.trapezoid(tpr, fpr) == pytest.approx(m.roc_auc(y, s))


# --- confusion, Brier, calibration -------------------------------------------------

def test_confusion_counted_by_hand() -> None:
    y = [1, 1, 1, 0, 0, 0, 0]
    pred = [1, 0, 1, 1, 1, 0, 0]
    c = m.confusion(y, pred)
    assert c == {"tn": 2, "fp": 2, "fn": 1, "tp": 2}
    assert all(type(v) is int for v in c.values())


def test_brier_by_hand() -> None:
    # (0.1^2 + 0.2^2 + 0.4^2 + 0.3^2) / 4 = 0.30 / 4
    assert m.brier([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.3]) == pytest.approx(0.075)
    assert m.brier([0, 1], [0.0, 1.0]) == 0.0
    assert m.brier([0, 1], [1.0, 0.0]) == 1.0


def test_ece_by_hand_weighted_by_bin_count() -> None:
    y = [0, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.7, 0.8]
    # bin [0, .5): 3 points, mean p .2, 1/3 positive; bin [.5, 1]: 2 points, .75 vs 1
    expected = 3 / 5 * abs(1 / 3 - 0.2) + 2 / 5 * abs(1.0 - 0.75)
    assert expected == pytest.approx(0.18)
    assert m.expected_calibration_error(y, p, bins=2) == pytest.approx(0.18)


def test_ece_perfect_and_probability_one_in_last_bin() -> None:
    assert m.expected_calibration_error([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == 0.0
    b = m.calibration_bins([0, 1, 1], [0.05, 0.95, 1.0], bins=10)
    assert b["count"].tolist() == [1] + [0] * 8 + [2]
    assert b["frac_pos"][-1] == 1.0 and b["mean_prob"][-1] == pytest.approx(0.975)
    assert np.isnan(b["mean_prob"][1:9]).all()
    np.testing.assert_allclose(b["edges"], np.linspace(0, 1, 11))


# --- binary_metrics -----------------------------------------------------------------

def imbalanced() -> tuple[list[int], list[float]]:
    """8 negatives and 2 tumours; at 0.5: tp=1, fn=1, fp=1, tn=7."""
    return [0] * 8 + [1, 1], [0.1] * 7 + [0.6] + [0.7, 0.2]


def test_binary_metrics_imbalanced_by_hand() -> None:
    r = m.binary_metrics(*imbalanced())
    assert r["confusion"] == {"tn": 7, "fp": 1, "fn": 1, "tp": 1}
    assert r["n"] == 10
    assert r["accuracy"] == pytest.approx(0.8)
    assert r["sensitivity"] == pytest.approx(0.5)
    assert r["specificity"] == pytest.approx(7 / 8)
    assert r["balanced_accuracy"] == pytest.approx((0.5 + 7 / 8) / 2)  # not the 0.8 accuracy
    assert r["precision"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(0.5)
    assert r["auc"] == pytest.approx(15 / 16)  # 0.7 beats all 8, 0.2 beats seven 0.1s
    assert r["brier"] == pytest.approx((7 * 0.01 + 0.36 + 0.09 + 0.64) / 10)
    assert r["threshold"] == 0.5


def test_binary_metrics_json_serialisable_plain_types() -> None:
    r = m.binary_metrics(*imbalanced(), threshold=0.3)
    assert set(r) == {"n", "accuracy", "balanced_accuracy", "auc", "sensitivity",
                      "specificity", "precision", "f1", "brier", "ece", "threshold",
                      "confusion"}
    for k, v in r.items():
        assert type(v) in (int, float, dict), k
    assert json.loads(json.dumps(r)) == r


def test_binary_metrics_threshold_is_inclusive() -> None:
    r = m.binary_metrics([0, 1], [0.2, 0.5], threshold=0.5)
    assert r["confusion"]["tp"] == 1


def test_binary_metrics_undefined_values_are_nan() -> None:
    r = m.binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert r["accuracy"] == 1.0 and r["specificity"] == 1.0
    for k in ("auc", "sensitivity", "precision", "f1", "balanced_accuracy"):
        assert math.isnan(r[k]), k


# --- choose_threshold ---------------------------------------------------------------

SCREEN_Y = [0, 0, 0, 0, 1, 1, 1, 1]
SCREEN_P = [0.1, 0.2, 0.4, 0.7, 0.3, 0.6, 0.8, 0.9]


def test_choose_threshold_reaches_min_sensitivity_where_half_does_not() -> None:
    assert m.binary_metrics(SCREEN_Y, SCREEN_P, 0.5)["sensitivity"] == 0.75
    t = m.choose_threshold(SCREEN_Y, SCREEN_P, min_sensitivity=0.95)
    # catching the tumour at 0.3 needs t <= 0.3; 0.25 keeps two negatives below it
    assert t == pytest.approx(0.25)
    r = m.binary_metrics(SCREEN_Y, SCREEN_P, t)
    assert r["sensitivity"] >= 0.95 and r["specificity"] == 0.5


def test_choose_threshold_lower_target_gives_more_specificity() -> None:
    # sensitivity >= 0.7: 0.35 (spec .5) and 0.5 (spec .75) qualify -> 0.5
    assert m.choose_threshold(SCREEN_Y, SCREEN_P, min_sensitivity=0.7) == pytest.approx(0.5)


def test_choose_threshold_tie_goes_to_closest_to_half() -> None:
    # 0.5 and the midpoint 0.55 both give sensitivity 1 and specificity 1
    assert m.choose_threshold([0, 1], [0.2, 0.9]) == 0.5


def test_choose_threshold_prefers_sensitivity_at_equal_specificity() -> None:
    # 0.2 and 0.375 both have specificity 1; 0.2 also keeps sensitivity 1
    assert m.choose_threshold([0, 1, 1], [0.1, 0.3, 0.45], 0.5) == pytest.approx(0.2)


def test_choose_threshold_fallback_when_target_unreachable() -> None:
    # the tumour at 0.01 is below the 0.05 floor: best sensitivity is 0.5, then
    # specificity 1 at 0.5 and 0.65, then closest to 0.5
    assert m.choose_threshold([1, 0, 1], [0.01, 0.4, 0.9]) == 0.5


def test_choose_threshold_clipped_into_range() -> None:
    # the best midpoint 0.035 is clipped to 0.05, which still catches both tumours
    assert m.choose_threshold([0, 1, 1], [0.01, 0.06, 0.9]) == pytest.approx(0.05)
    rng = np.random.default_rng(3)
    for _ in range(30):
        y = np.r_[0, 1, rng.integers(0, 2, 20)]
        p = rng.random(y.size) ** 3
        assert 0.05 <= m.choose_threshold(y, p) <= 0.95


def test_choose_threshold_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        m.choose_threshold([1, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="min_sensitivity"):
        m.choose_threshold([0, 1], [0.2, 0.8], min_sensitivity=1.5)


# --- summarize ----------------------------------------------------------------------

def test_summarize_mean_and_population_std() -> None:
    runs = [{"auc": 0.8, "f1": 0.5, "n": 10, "confusion": {"tp": 1}, "ok": True},
            {"auc": 0.6, "f1": NAN, "n": 20, "confusion": {"tp": 2}, "ok": False}]
    s = m.summarize(runs)
    assert list(s) == ["auc_mean", "auc_std", "f1_mean", "f1_std", "n_mean", "n_std"]
    assert s["auc_mean"] == pytest.approx(0.7)
    assert s["auc_std"] == pytest.approx(0.1)  # ddof=0, not 0.1414
    assert s["f1_mean"] == 0.5 and s["f1_std"] == 0.0  # NaN skipped
    assert s["n_mean"] == 15.0 and s["n_std"] == 5.0


def test_summarize_keys_missing_and_all_nan() -> None:
    runs = [{"auc": NAN, "brier": 0.1}, {"auc": NAN}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = m.summarize(runs, keys=["auc", "brier"])
    assert math.isnan(s["auc_mean"]) and math.isnan(s["auc_std"])
    assert s["brier_mean"] == pytest.approx(0.1) and s["brier_std"] == 0.0


def test_summarize_rejects_empty_and_non_numeric() -> None:
    with pytest.raises(ValueError):
        m.summarize([])
    with pytest.raises(ValueError, match="confusion"):
        m.summarize([{"confusion": {"tp": 1}}], keys=["confusion"])


# --- validation ---------------------------------------------------------------------

@pytest.mark.parametrize("y, p, match", [
    ([0, 1, 1], [0.2, 0.3], "3"),
    ([0, 2], [0.2, 0.3], "0/1"),
    ([0, 0.5], [0.2, 0.3], "0/1"),
    ([0, 1], [0.2, 1.2], r"\[0, 1\]"),
    ([0, 1], [-0.1, 0.3], r"\[0, 1\]"),
    ([0, 1], [0.2, NAN], "finite"),
    ([0, 1], [0.2, np.inf], "finite"),
    ([], [], "non-empty"),
    ([[0, 1]], [[0.2, 0.3]], "1-D"),
    (["a", "b"], [0.2, 0.3], "0/1"),
    ([0, 1], ["x", "y"], "numeric"),
])
def test_bad_input_raises(y, p, match) -> None:
    with pytest.raises(ValueError, match=match):
        m.binary_metrics(y, p)


def test_other_validation() -> None:
    with pytest.raises(ValueError, match="finite"):
        m.roc_auc([0, 1], [0.1, NAN])
    with pytest.raises(ValueError, match="y_pred"):
        m.confusion([0, 1], [0, 2])
    with pytest.raises(ValueError, match="y_pred"):
        m.confusion([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="bins"):
        m.expected_calibration_error([0, 1], [0.2, 0.3], bins=0)
    with pytest.raises(ValueError, match="threshold"):
        m.binary_metrics([0, 1], [0.2, 0.3], threshold=1.5)


def test_accepts_bool_and_float_labels() -> None:
    assert m.confusion(np.array([True, False]), [1.0, 0.0]) == {
        "tn": 1, "fp": 0, "fn": 0, "tp": 1}


def test_module_is_pure_numpy() -> None:
    code = ("import sys, models.core.metrics; "
            "bad = {'tensorflow', 'sklearn', 'matplotlib'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_min_specificity_keeps_the_threshold_from_calling_everything_a_tumour() -> None:
    # Prepare: reaching 0.95 sensitivity would need t=0.05 (specificity 0); one tumour
    # scores below every normal slice.
    y = [1, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.25, 0.3, 0.35, 0.7, 0.75, 0.8, 0.85, 0.9]

    # Execute
    strict = m.choose_threshold(y, p, min_sensitivity=0.95)
    guarded = m.choose_threshold(y, p, min_sensitivity=0.95, min_specificity=0.5)

    # Assert: without the guard every normal slice is flagged; with it the cost rule
    # (2 x sensitivity + specificity) keeps all normals right and misses one tumour.
    assert strict == pytest.approx(0.05)
    assert 0.35 < guarded < 0.7
