import numpy as np

from models.cv import review_list


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
