"""Head weights: safe npz round trip, every refusal, and the pure helpers."""
import io

import numpy as np
import pytest

from models.core import weights

D = 8


def make_head(seed=0, dim=D):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in weights.head_shapes(dim).items()}


def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_head_shapes():
    assert weights.head_shapes(5, hidden=4) == {
        "hidden/kernel": (5, 4), "hidden/bias": (4,), "output/kernel": (4, 1),
        "output/bias": (1,)}
    assert tuple(weights.head_shapes(5)) == weights.HEAD_NAMES


@pytest.mark.parametrize("as_source", ["bytes", "path", "filelike"])
def test_round_trip(tmp_path, as_source):
    # Prepare
    head = make_head()
    path = tmp_path / "head.npz"
    weights.save_head(path, head)
    source = {"bytes": path.read_bytes(), "path": path,
              "filelike": io.BytesIO(path.read_bytes())}[as_source]
    # Execute
    loaded = weights.load_head(source, expected_shapes=weights.head_shapes(D))
    # Assert
    assert list(loaded) == list(weights.HEAD_NAMES)
    for name in weights.HEAD_NAMES:
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], head[name])


def test_serialisation_is_deterministic_and_filelike_save_works():
    head = make_head()
    buf = io.BytesIO()
    weights.save_head(buf, head)
    assert buf.getvalue() == weights.head_to_bytes(head) == weights.head_to_bytes(make_head())


def test_float64_is_converted_to_float32():
    head = {k: v.astype(np.float64) for k, v in make_head().items()}
    loaded = weights.load_head(npz_bytes(**head))
    assert all(a.dtype == np.float32 for a in loaded.values())


def _flip_middle(data):
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]


def _with(**changes):
    head = make_head()
    head.update(changes)
    return {k: v for k, v in head.items() if v is not None}


@pytest.mark.parametrize("data, match", [
    (npz_bytes(**_with(**{"hidden/bias": np.array([object()] * 32, dtype=object)})),
     "[Oo]bject arrays"),
    (weights.head_to_bytes(make_head())[:-40], "not an .npz"),
    (weights.head_to_bytes(make_head())[:200], "not an .npz"),
    (b"\x80\x04pickle-ish", "not an .npz"),
    (_flip_middle(weights.head_to_bytes(make_head())), "corrupt"),
    (npz_bytes(**_with(**{"output/bias": np.array([np.nan], np.float32)})), "output/bias.*NaN"),
    (npz_bytes(**_with(**{"hidden/bias": np.full(32, np.inf, np.float32)})), "hidden/bias.*Inf"),
    (npz_bytes(**_with(**{"output/kernel": np.zeros((32, 2), np.float32)})),
     r"output/kernel: shape \(32, 2\), expected \(32, 1\)"),
    (npz_bytes(**_with(**{"hidden/kernel": np.zeros(8, np.float32)})), "not 2-D"),
    (npz_bytes(**_with(extra=np.zeros(1, np.float32))), r"extra \['extra'\]"),
    (npz_bytes(**_with(**{"output/bias": None})), r"missing \['output/bias'\]"),
    (npz_bytes(**_with(**{"output/bias": np.array([1], np.int32)})), "output/bias: dtype int32"),
])
def test_refusals(data, match):
    with pytest.raises(weights.WeightsError, match=match):
        weights.load_head(data)


def test_wrong_shape_against_expected():
    data = weights.head_to_bytes(make_head(dim=D))
    with pytest.raises(weights.WeightsError, match=r"hidden/kernel: shape \(8, 32\), expected"):
        weights.load_head(data, expected_shapes=weights.head_shapes(16))


def test_too_big_refused(tmp_path):
    data = weights.head_to_bytes(make_head())
    path = tmp_path / "h.npz"
    path.write_bytes(data)
    for source in (data, path, io.BytesIO(data)):
        with pytest.raises(weights.WeightsError, match="limit"):
            weights.load_head(source, max_bytes=len(data) - 1)


def test_zip_bomb_refused_by_uncompressed_size():
    # Prepare: a compressed npz that is tiny on disk but large once expanded
    buf = io.BytesIO()
    head = make_head(dim=4096)
    np.savez_compressed(buf, **{k: np.zeros_like(v) for k, v in head.items()})
    data = buf.getvalue()
    # Execute / Assert
    with pytest.raises(weights.WeightsError, match="expands"):
        weights.load_head(data, max_bytes=len(data) * 4)


def test_save_refuses_invalid_head(tmp_path):
    with pytest.raises(weights.WeightsError):
        weights.save_head(tmp_path / "h.npz", _with(**{"output/bias": np.array([np.inf])}))
    assert not (tmp_path / "h.npz").exists()


def test_weights_error_is_value_error():
    assert issubclass(weights.WeightsError, ValueError)


def test_flatten_unflatten_round_trip():
    head = make_head()
    vec = weights.flatten(head)
    assert vec.dtype == np.float32 and vec.ndim == 1
    assert vec.size == D * 32 + 32 + 32 + 1
    np.testing.assert_array_equal(vec[:D * 32], head["hidden/kernel"].ravel())
    back = weights.unflatten(vec, weights.head_shapes(D))
    for name in weights.HEAD_NAMES:
        np.testing.assert_array_equal(back[name], head[name])


def test_unflatten_wrong_size_refused():
    with pytest.raises(weights.WeightsError, match="values"):
        weights.unflatten(np.zeros(3), weights.head_shapes(D))


def test_delta_and_norm():
    a, b = make_head(1), make_head(2)
    d = weights.delta(a, b)
    np.testing.assert_allclose(d["hidden/bias"], a["hidden/bias"] - b["hidden/bias"])
    assert weights.l2_norm(d) == pytest.approx(
        float(np.linalg.norm(weights.flatten(a).astype(np.float64) - weights.flatten(b))),
        rel=1e-5)
    assert weights.l2_norm({n: np.zeros(s) for n, s in weights.head_shapes(D).items()}) == 0.0


def test_delta_shape_mismatch_refused():
    with pytest.raises(weights.WeightsError, match="hidden/kernel"):
        weights.delta(make_head(dim=4), make_head(dim=5))
