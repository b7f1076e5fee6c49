import multiprocessing
import threading

import numpy as np
import pytest

from models.training.cv import cross_validate, review_list
from models.core.metrics import binary_metrics
from models.training.train import recipe


def test_review_list_names_confident_contradictions_most_confident_first():
    files = ["no/a.jpg", "yes/b.jpg", "no/c.jpg", "yes/d.jpg", "no/e.jpg"]
    y = np.array([0, 1, 0, 1, 0])
    prob = np.array([0.95, 0.02, 0.5, 0.99, 0.9])

    review = review_list(files, y, prob)

    assert review == [{"file": "yes/b.jpg", "label": 1, "probability": 0.02},
                      {"file": "no/a.jpg", "label": 0, "probability": 0.95},
                      {"file": "no/e.jpg", "label": 0, "probability": 0.9}]


def test_review_list_is_empty_when_the_model_agrees_with_every_label():
    assert review_list(["yes/a.jpg", "no/b.jpg"], np.array([1, 0]), np.array([0.6, 0.4])) == []


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2], ids=["in-this-process", "two-processes"])
def test_each_fold_model_scores_its_own_fold(small_data, jobs):
    # Folds trained here one after another or in processes at once: each file's
    # out-of-fold probability lands where its fold's metrics say it does.
    result = cross_validate(small_data, "edge", 2, recipe("edge", epochs=2), jobs=jobs)

    assert [f["fold"] for f in result["per_fold"]] == [0, 1]
    rounding = 1e-5  # the JSON keeps probabilities to 5 decimals
    for fold in result["per_fold"]:
        files = [k for k, f in result["folds"].items() if f == fold["fold"]]
        y = np.array([k.startswith("yes/") for k in files], dtype=int)
        prob = np.array([result["predictions"][k] for k in files])
        again = binary_metrics(y, prob, fold["threshold"])
        # What rounding alone can move: decisions that sit at the threshold, and the
        # tumour/healthy pairs it can tie or reorder (2-epoch models score alike).
        at_threshold = np.mean(np.abs(prob - fold["threshold"]) <= rounding)
        close_pairs = np.mean(np.abs(prob[y == 1][:, None] - prob[y == 0][None]) <= 2 * rounding)
        assert fold["n"] == len(files) and prob.max() > 0
        assert abs(again["accuracy"] - fold["accuracy"]) <= at_threshold + 1e-9
        assert abs(again["auc"] - fold["auc"]) <= close_pairs + 1e-9
        assert again["brier"] == pytest.approx(fold["brier"], abs=1e-4)


@pytest.mark.slow
def test_a_failing_fold_stops_the_other_fold_processes_and_raises_its_error():
    # Prepare: fold 0 fails at once (unknown architecture); fold 1 would train for hours
    from models.training.cv import _fold
    from models.training.parallel import run_jobs
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 128, 128, 1)).astype(np.float32)
    y, groups = np.arange(16) % 2, np.arange(16)
    fold_of = (np.arange(16) // 2) % 2
    endless = recipe("edge", epochs=100_000)
    args = [("no-such-arch", endless, x, y, groups, [], fold_of, 0, ()),
            ("edge", endless, x, y, groups, [], fold_of, 1, ())]
    outcome: dict = {}

    def run():
        try:
            run_jobs(_fold, args, 2, ["fold 0", "fold 1"])
        except Exception as exc:  # noqa: BLE001 - the test inspects it below
            outcome["error"] = exc

    # Execute: in a thread, so that waiting for fold 1 fails the test instead of hanging
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=300)

    # Assert
    assert not worker.is_alive(), "waited for the endless fold instead of stopping it"
    assert "unknown architecture 'no-such-arch'" in str(outcome["error"])
    assert multiprocessing.active_children() == []
