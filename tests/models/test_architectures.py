"""Architectures: the paper's exact CNN, the small-head edge CNN, head get/set/freeze."""
from __future__ import annotations

import numpy as np
import pytest

from models.training.architectures import (build_model, freeze_backbone, get_head, set_head,
                                           with_embedding)
from models.core.weights import HEAD_NAMES, head_shapes


def test_paper_model_matches_the_seed_papers_figure_5():
    model = build_model("paper")

    assert model.count_params() == 698_321
    assert model.get_layer("embedding").output.shape[-1] == 21_632
    assert sum(a.size for a in get_head(model).values()) == 692_289


def test_edge_model_has_a_small_head():
    model = build_model("edge", dropout=0.3)

    head = get_head(model)

    assert {k: v.shape for k, v in head.items()} == head_shapes(192)
    assert sum(a.size for a in head.values()) == 6_209
    assert model.count_params() == 62_385


def test_set_head_round_trips_and_leaves_backbone_alone():
    model = build_model("edge")
    backbone = [layer for layer in model.layers if not layer.name.startswith("head_")]
    before = [w.copy() for layer in backbone for w in layer.get_weights()]
    rng = np.random.default_rng(0)
    new = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in get_head(model).items()}

    set_head(model, new)

    got = get_head(model)
    for name in HEAD_NAMES:
        np.testing.assert_array_equal(got[name], new[name])
    after = [w for layer in backbone for w in layer.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = build_model("paper")

    freeze_backbone(model)

    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"head_hidden", "head_output"}


def test_with_embedding_exposes_probability_embedding_and_the_last_blocks_input():
    model = build_model("edge")
    x = np.random.default_rng(1).uniform(0, 255, (2, 128, 128, 1)).astype(np.float32)

    prob, emb, block_input = with_embedding(model).predict(x, verbose=0)
    paper = with_embedding(build_model("paper"))

    assert prob.shape == (2, 1) and emb.shape == (2, 192)
    assert block_input.shape == (2, 16, 16, 48)  # the third stage's input
    np.testing.assert_allclose(prob, model.predict(x, verbose=0), atol=1e-6)
    assert len(paper.outputs) == 2  # its last block is not one models.core.block computes


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError, match="edge.*paper"):
        build_model("resnet9000")
