import numpy as np
import pytest

from models.cv import cross_validate, review_list
from models.metrics import binary_metrics
from models.train import recipe


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
    for fold in result["per_fold"]:
        files = [k for k, f in result["folds"].items() if f == fold["fold"]]
        y = np.array([k.startswith("yes/") for k in files], dtype=int)
        prob = np.array([result["predictions"][k] for k in files])
        again = binary_metrics(y, prob, fold["threshold"])
        assert fold["n"] == len(files)
        for key in ("accuracy", "auc", "brier"):
            assert again[key] == pytest.approx(fold[key], abs=1e-3), key
    assert all(0.0 < p < 1.0 for p in result["predictions"].values())
