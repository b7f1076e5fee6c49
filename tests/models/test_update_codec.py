"""Head-update wire format: int8 per-tensor quantization, top-k, and refusals."""
from __future__ import annotations

import io

import numpy as np
import pytest

from models.core.update_codec import decode, encode, quantize
from models.core.weights import WeightsError, head_shapes

SHAPES = head_shapes(256)


def delta(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.01, s).astype(np.float32) for k, s in SHAPES.items()}


def test_float32_round_trips_exactly():
    d = delta()

    payload, meta = encode(d, "float32")

    out = decode(payload, meta, SHAPES)
    assert all(np.array_equal(out[k], d[k]) for k in d)


def test_int8_error_is_within_half_a_step_and_payload_is_a_quarter():
    d = delta()
    float_payload, _ = encode(d, "float32")

    payload, meta = encode(d, "int8")

    out = decode(payload, meta, SHAPES)
    for k in d:
        assert np.max(np.abs(out[k] - d[k])) <= meta["scales"][k] / 2 + 1e-9
    assert len(payload) <= len(float_payload) / 3


def test_topk_keeps_only_the_largest_entries():
    d = {k: v for k, v in delta().items()}

    arrays, _ = quantize(d, topk=0.1)

    kernel = arrays["hidden/kernel"]
    assert np.count_nonzero(kernel) <= int(np.ceil(0.1 * kernel.size))
    big = np.abs(d["hidden/kernel"]) >= np.quantile(np.abs(d["hidden/kernel"]), 0.95)
    assert np.all(kernel[big] != 0)


@pytest.mark.parametrize("mutate, message", [
    (lambda p, m: (p, {**m, "scales": {}}), "scale"),
    (lambda p, m: (p, {**m, "scales": {k: -1.0 for k in m["scales"]}}), "positive"),
    (lambda p, m: (p[: len(p) // 2], m), "npz"),
    (lambda p, m: (b"PK\x03\x04garbage", m), "npz"),
    (lambda p, m: (p, {**m, "encoding": "bf16"}), "encoding"),
])
def test_malformed_int8_updates_are_refused(mutate, message):
    payload, meta = encode(delta(), "int8")
    payload, meta = mutate(payload, meta)

    with pytest.raises(WeightsError, match=message):
        decode(payload, meta, SHAPES)


def test_wrong_shape_and_float_arrays_in_int8_are_refused():
    _, meta = encode(delta(), "int8")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.zeros(s, np.float32) for k, s in SHAPES.items()})

    with pytest.raises(WeightsError, match="int8"):
        decode(buf.getvalue(), meta, SHAPES)
    with pytest.raises(WeightsError, match="larger|shape"):
        decode(encode({k: np.zeros((s[0] + 7,) + s[1:], np.float32)
                       for k, s in SHAPES.items()}, "int8")[0], meta, SHAPES)


@pytest.mark.parametrize("change, match", [
    (lambda arrays, meta: arrays["output/bias"].fill(-128), "-128"),
    (lambda arrays, meta: meta.update(topk=-1), "topk"),
    (lambda arrays, meta: meta.update(topk=1e308 * 10), "topk"),
    (lambda arrays, meta: meta["scales"].update({"hidden/bias": 10**400}), "scale"),
], ids=["-128", "negative topk", "infinite topk", "400-digit scale"])
def test_int8_values_and_fields_outside_the_encoding_are_refused(change, match):
    arrays, scales = quantize(delta())
    meta = {"encoding": "int8", "scales": scales}
    change(arrays, meta)
    buf = io.BytesIO()
    np.savez(buf, **arrays)

    with pytest.raises(WeightsError, match=match):
        decode(buf.getvalue(), meta, SHAPES)


ADAPTER_SHAPES = {**SHAPES, "block/lora_a": (432, 4), "block/lora_b": (4, 96)}


@pytest.mark.parametrize("encoding", ["float32", "int8"])
def test_an_update_with_the_blocks_adapter_round_trips_and_must_hold_it(encoding):
    rng = np.random.default_rng(3)
    d = {k: rng.normal(0, 0.01, s).astype(np.float32) for k, s in ADAPTER_SHAPES.items()}

    payload, meta = encode(d, encoding)

    out = decode(payload, meta, ADAPTER_SHAPES)
    assert set(out) == set(ADAPTER_SHAPES)
    assert all(np.abs(out[k] - d[k]).max() <= meta.get("scales", {}).get(k, 0) / 2 + 1e-9
               for k in d)
    head_only, head_meta = encode({k: d[k] for k in SHAPES}, encoding)
    with pytest.raises(WeightsError, match="lora|every array"):
        decode(head_only, head_meta, ADAPTER_SHAPES)
    with pytest.raises(WeightsError):  # an adapter where the bundle has none
        decode(payload, meta, SHAPES)
