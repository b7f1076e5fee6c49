"""Small head updates the aggregation tests build, and how they compare results."""
from __future__ import annotations

import numpy as np


def upd(w, b):
    return {"w": np.array(w, np.float32), "b": np.array(b, np.float32)}


def assert_arrays(result, expected):
    assert set(result) == set(expected)
    for name, want in expected.items():
        assert result[name].dtype == np.float32
        np.testing.assert_allclose(result[name], want, rtol=1e-6, atol=1e-7)
