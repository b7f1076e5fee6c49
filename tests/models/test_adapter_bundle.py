"""A bundle made ready for clinics to train an adapter (``python -m models sign
--add-adapter``): the same predictions, the adapter in a file of its own, refusals."""
from __future__ import annotations

import numpy as np
import pytest

from models.__main__ import DEFAULT_BUNDLE, main
from models.core.bundle import (Bundle, read_manifest, verify_bundle, write_bundle,
                                written_fields)
from models.core.preprocess import InputSpec, preprocess, read_image
from models.core.runtime import bundle_model
from models.core.signing import load_signing_key
from models.training.adapter_bundle import add_adapter


def test_the_adapter_changes_no_prediction_until_clinics_train_it(
        tmp_path, signing_key_file, data_dir):
    # Prepare: slices of both classes, and the shipped bundle
    paths = sorted((data_dir / "yes").iterdir())[:6] + sorted((data_dir / "no").iterdir())[:6]
    x = np.stack([preprocess(read_image(p), InputSpec(128, 128, 1)) for p in paths])
    shipped = Bundle(DEFAULT_BUNDLE, read_manifest(DEFAULT_BUNDLE))
    # Execute
    code = main(["sign", str(DEFAULT_BUNDLE), "--key", str(signing_key_file),
                 "--add-adapter", "4", "--out", str(tmp_path / "a")])
    # Assert: what clinics train and send is the head and the adapter; the block's own
    # file is the shipped one, and every prediction is the same
    assert code == 0
    adapted = verify_bundle(tmp_path / "a", [load_signing_key(signing_key_file).verify_key])
    assert adapted.version == shipped.version
    assert adapted.update_shapes == {**shipped.head_shapes, "block/lora_a": (9 * 48, 4),
                                     "block/lora_b": (4, 96)}
    assert adapted.manifest["files"]["block.npz"] == shipped.manifest["files"]["block.npz"]
    np.testing.assert_array_equal(bundle_model(adapted).predict(x)[0],
                                  bundle_model(shipped).predict(x)[0])


def test_a_bundle_without_a_numpy_block_or_with_an_adapter_is_refused(
        tmp_path, signing_key_file, capsys):
    # Prepare: the shipped bundle with an adapter, and one whose head runs in LiteRT
    key = load_signing_key(signing_key_file)
    add_adapter(DEFAULT_BUNDLE, tmp_path / "a", key, rank=2)
    shipped = Bundle(DEFAULT_BUNDLE, read_manifest(DEFAULT_BUNDLE))
    fields = {k: v for k, v in written_fields(shipped.manifest).items()
              if k not in ("block", "slice_check")}
    write_bundle(tmp_path / "no-block", shipped.read_file("model.tflite"),
                 shipped.load_head(), fields, key)
    # Execute and assert
    with pytest.raises(ValueError, match="already has an adapter of rank 2"):
        add_adapter(tmp_path / "a", tmp_path / "b", key)
    with pytest.raises(ValueError, match="no last block in NumPy"):
        add_adapter(tmp_path / "no-block", tmp_path / "c", key)
    assert main(["sign", str(DEFAULT_BUNDLE), "--key", str(signing_key_file), "--version",
                 "3", "--add-adapter", "2", "--out", str(tmp_path / "d")]) == 2
    assert "--add-adapter keeps the bundle's version" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("b", "c", "d"))
