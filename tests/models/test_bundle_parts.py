"""A bundle's optional parts: the signed "not a brain MRI slice" check and the last
block of format 3."""
import numpy as np
import pytest

from models.core import bundle, signing, weights
from tests.models.test_bundle import D, FIELDS, MODEL_BYTES, flip_middle, make_head


@pytest.fixture
def key():
    return signing.generate_signing_key()


def test_a_slice_check_travels_signed_and_loads_with_its_threshold(tmp_path, key):
    # Prepare
    fields = {**FIELDS, "slice_check": {"file": "slice_head.npz", "threshold": 0.3}}
    # Execute
    bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(), fields, key,
                        slice_head=make_head(seed=7))
    b = bundle.verify_bundle(tmp_path / "b", [key.verify_key])
    # Assert
    head, threshold = b.load_slice_check()
    assert threshold == 0.3 and "slice_head.npz" in b.manifest["files"]
    np.testing.assert_array_equal(head["hidden/kernel"], make_head(seed=7)["hidden/kernel"])
    assert bundle.verify_bundle(tmp_path / "b", [key.verify_key]).load_slice_check()
    plain = bundle.write_bundle(tmp_path / "p", MODEL_BYTES, make_head(), FIELDS, key)
    assert "slice_check" not in plain
    assert bundle.verify_bundle(tmp_path / "p", [key.verify_key]).load_slice_check() is None


@pytest.mark.parametrize("check, with_file", [
    ({"file": "slice_head.npz", "threshold": 0.3}, False),
    ({"file": "other.npz", "threshold": 0.3}, True),
    ({"file": "slice_head.npz", "threshold": 1.0}, True),
    ({"file": "slice_head.npz"}, True),
], ids=["file-missing", "other-name", "threshold-1", "no-threshold"])
def test_a_bad_slice_check_is_refused(tmp_path, key, check, with_file):
    with pytest.raises(bundle.ManifestError, match="slice_check"):
        bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(),
                            {**FIELDS, "slice_check": check}, key,
                            slice_head=make_head(seed=7) if with_file else None)


def test_a_slice_head_for_another_embedding_is_refused_when_loaded(tmp_path, key):
    rng = np.random.default_rng(1)
    wide = {n: rng.standard_normal(s).astype(np.float32)
            for n, s in weights.head_shapes(D + 4).items()}
    bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(),
                        {**FIELDS, "slice_check": {"file": "slice_head.npz",
                                                   "threshold": 0.3}}, key, slice_head=wide)
    b = bundle.verify_bundle(tmp_path / "b", [key.verify_key])
    with pytest.raises(bundle.IntegrityError, match="reads 12 features"):
        b.load_slice_check()


def test_a_tampered_slice_head_is_refused(tmp_path, key):
    bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(),
                        {**FIELDS, "slice_check": {"file": "slice_head.npz",
                                                   "threshold": 0.3}}, key,
                        slice_head=make_head(seed=7))
    flip_middle(tmp_path / "b" / "slice_head.npz")
    with pytest.raises(bundle.IntegrityError, match="slice_head.npz"):
        bundle.verify_bundle(tmp_path / "b", [key.verify_key])


def block_arrays(rank=0):
    from models.core.block import block_shapes
    rng = np.random.default_rng(3)
    return {n: rng.standard_normal(s).astype(np.float32)
            for n, s in block_shapes([4, 4, 2], 3, rank).items()}


BLOCK_FIELD = {"file": "block.npz", "input": [4, 4, 2], "channels": 3, "adapter_rank": 0}


def test_a_block_makes_a_format_3_bundle_and_loads_with_its_shapes(tmp_path, key):
    # Execute
    manifest = bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(),
                                   {**FIELDS, "block": BLOCK_FIELD}, key, block=block_arrays())
    b = bundle.verify_bundle(tmp_path / "b", [key.verify_key])
    # Assert
    assert manifest["format"] == 3 and "block.npz" in manifest["files"]
    for name, arr in block_arrays().items():
        np.testing.assert_array_equal(b.load_block()[name], arr)
    bundle.write_bundle(tmp_path / "p", MODEL_BYTES, make_head(), FIELDS, key)
    assert bundle.verify_bundle(tmp_path / "p", [key.verify_key]).load_block() is None


ADAPTER_FIELD = {**BLOCK_FIELD, "adapter_rank": 2, "adapter_file": "adapter.npz"}


def test_an_adapter_is_a_file_of_its_own_and_loads_with_the_block(tmp_path, key):
    # Execute
    manifest = bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(),
                                   {**FIELDS, "block": ADAPTER_FIELD}, key,
                                   block=block_arrays(rank=2))
    b = bundle.verify_bundle(tmp_path / "b", [key.verify_key])
    # Assert: the block's file holds no adapter, so a new adapter leaves it unchanged
    assert {"block.npz", "adapter.npz"} <= set(manifest["files"])
    assert set(weights.read_npz((tmp_path / "b" / "block.npz").read_bytes(), 1 << 20)) \
        == {"block/kernel", "block/gamma", "block/beta", "block/mean", "block/var"}
    for name, arr in block_arrays(rank=2).items():
        np.testing.assert_array_equal(b.load_block()[name], arr)
    assert b.update_shapes == {**b.head_shapes, "block/lora_a": (18, 2),
                               "block/lora_b": (2, 3)}


def test_adapter_arrays_of_other_shapes_than_the_manifest_says_are_refused(tmp_path, key):
    bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(),
                        {**FIELDS, "block": ADAPTER_FIELD}, key, block=block_arrays(rank=3))
    b = bundle.verify_bundle(tmp_path / "b", [key.verify_key])
    with pytest.raises(weights.WeightsError, match="block/lora_a"):
        b.load_block()


@pytest.mark.parametrize("field", [{**BLOCK_FIELD, "file": "other.npz"},
                                   {**BLOCK_FIELD, "input": [4, 4]},
                                   {**BLOCK_FIELD, "channels": 0},
                                   {**BLOCK_FIELD, "adapter_rank": 2},  # no adapter file
                                   {**BLOCK_FIELD, "adapter_file": "adapter.npz"}])
def test_a_bad_block_field_is_refused(tmp_path, key, field):
    with pytest.raises(bundle.ManifestError, match="block"):
        bundle.write_bundle(tmp_path / "b", MODEL_BYTES, make_head(),
                            {**FIELDS, "block": field}, key, block=block_arrays())
