"""models.training.plots writes real, readable PNG files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.training import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sample(n: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
    prob = np.clip(0.35 * y + 0.65 * rng.random(n), 0.0, 1.0)
    return y, prob


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None
    height, width = image.shape[:2]
    assert 200 <= height <= 2000 and 200 <= width <= 2000
    assert image.std() > 10  # something drawn, not a blank canvas


def test_write_all_creates_dir_and_three_pngs(tmp_path: Path) -> None:
    y, prob = sample()
    out = tmp_path / "nested" / "eval"
    paths = plots.write_all(y, prob, 0.4, out)
    assert [p.name for p in paths] == ["roc.png", "calibration.png", "confusion.png"]
    assert all(p.parent == out for p in paths)
    for p in paths:
        assert_png(p)


def test_matplotlib_can_read_back(tmp_path: Path) -> None:
    import matplotlib.image

    y, prob = sample()
    path = plots.plot_calibration(y, prob, tmp_path / "cal.png", bins=5)
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 200 and pixels.shape[1] >= 200


def test_individual_plots_accept_str_paths(tmp_path: Path) -> None:
    y, prob = sample(seed=1)
    assert_png(plots.plot_roc(y, prob, str(tmp_path / "roc.png")))
    assert_png(plots.plot_roc(y, prob, tmp_path / "roc_t.png", threshold=0.5))
    assert_png(plots.plot_confusion({"tn": 40, "fp": 3, "fn": 0, "tp": 37},
                                    str(tmp_path / "cm.png")))


def test_single_class_still_draws(tmp_path: Path) -> None:
    y, prob = np.zeros(10, dtype=int), np.linspace(0.0, 0.4, 10)
    for p in plots.write_all(y, prob, 0.5, tmp_path):
        assert_png(p)


def test_bad_input_raises_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plots.write_all([0, 1], [0.2, 1.3], 0.5, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="tp"):
        plots.plot_confusion({"tn": 1, "fp": 1, "fn": 1}, tmp_path / "cm.png")


def test_import_does_not_load_matplotlib() -> None:
    code = ("import sys, models.training.plots; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)
