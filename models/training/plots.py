"""Evaluation figures (ROC, reliability diagram, confusion matrix) written as PNG files.

Matplotlib is imported lazily inside the functions, so importing this module is cheap
(the appliance never needs it). Figures are drawn on ``matplotlib.figure.Figure`` with an
explicit Agg canvas: no pyplot, no global backend switch, safe in servers and threads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from models.core import metrics

PathLike = str | os.PathLike
CLASS_NAMES = ("no tumour", "tumour")


def _figure(size: tuple[float, float] = (5.0, 5.0)) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: PathLike) -> Path:
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def plot_roc(y: Sequence[int], prob: Sequence[float], path: PathLike,
             threshold: float | None = None) -> Path:
    """Write the ROC curve (AUC in the legend) to ``path``.

    Parameters
    ----------
    y, prob : array_like
        0/1 labels and probabilities of class 1 (tumour).
    path : str or PathLike
        Destination PNG.
    threshold : float, optional
        If given, mark the operating point ``prob >= threshold``.

    Returns
    -------
    Path
        ``path``. With a single class the axes carry a note instead of a curve.
    """
    fpr, tpr, _ = metrics.roc_curve(y, prob)
    auc = metrics.roc_auc(y, prob)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC = 0.5)")
    if auc == auc:  # not NaN: both classes present
        ax.plot(fpr, tpr, color="tab:blue", lw=2, label=f"model (AUC = {auc:.3f})")
        if threshold is not None:
            m = metrics.binary_metrics(y, prob, threshold)
            ax.plot(1 - m["specificity"], m["sensitivity"], "o", color="tab:red",
                    label=f"threshold {threshold:.2f}")
    else:
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class present", ha="center",
                va="center", transform=ax.transAxes)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", title="ROC curve",
           xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_calibration(y: Sequence[int], prob: Sequence[float], path: PathLike,
                     bins: int = 10) -> Path:
    """Write a reliability diagram (with a histogram of probabilities) to ``path``.

    Parameters
    ----------
    y, prob : array_like
        0/1 labels and probabilities of class 1 (tumour).
    path : str or PathLike
        Destination PNG.
    bins : int
        Number of equal-width bins on [0, 1], as in ``metrics.expected_calibration_error``.

    Returns
    -------
    Path
        ``path``.
    """
    b = metrics.calibration_bins(y, prob, bins)
    ece = metrics.expected_calibration_error(y, prob, bins)
    full = b["count"] > 0
    fig = _figure((5.0, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    top.plot(b["mean_prob"][full], b["frac_pos"][full], "o-", color="tab:blue",
             label=f"model (ECE = {ece:.3f})")
    top.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="Observed fraction of tumours",
            title=f"Calibration (Brier = {metrics.brier(y, prob):.3f})")
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    edges = b["edges"]
    bottom.bar(edges[:-1], b["count"], width=edges[1:] - edges[:-1], align="edge",
               color="tab:gray", edgecolor="white")
    bottom.set(xlabel="Predicted probability of tumour", ylabel="Count")
    return _save(fig, path)


def plot_confusion(confusion: dict[str, int], path: PathLike,
                   threshold: float | None = None) -> Path:
    """Write the 2x2 confusion matrix (rows = actual, columns = predicted) to ``path``.

    Parameters
    ----------
    confusion : dict
        Counts with keys ``tn``, ``fp``, ``fn``, ``tp`` (as from ``metrics.confusion``).
    path : str or PathLike
        Destination PNG.
    threshold : float, optional
        Shown in the title when given.

    Returns
    -------
    Path
        ``path``.
    """
    missing = {"tn", "fp", "fn", "tp"} - set(confusion)
    if missing:
        raise ValueError(f"confusion dict lacks keys {sorted(missing)}")
    cells = [[int(confusion["tn"]), int(confusion["fp"])],
             [int(confusion["fn"]), int(confusion["tp"])]]
    if min(min(row) for row in cells) < 0:
        raise ValueError("confusion counts must be non-negative")
    peak = max(max(row) for row in cells) or 1
    fig = _figure((4.5, 4.0))
    ax = fig.add_subplot()
    ax.imshow(cells, cmap="Blues", vmin=0, vmax=peak)
    names = [["TN", "FP"], ["FN", "TP"]]
    for i in range(2):
        for j in range(2):
            colour = "white" if cells[i][j] > peak / 2 else "black"
            ax.text(j, i, f"{cells[i][j]}\n{names[i][j]}", ha="center", va="center",
                    color=colour, fontsize=14)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
           xlabel="Predicted", ylabel="Actual")
    title = "Confusion matrix"
    ax.set_title(title if threshold is None else f"{title} (threshold {threshold:.2f})")
    return _save(fig, path)


def write_all(y: Sequence[int], prob: Sequence[float], threshold: float,
              out_dir: PathLike) -> list[Path]:
    """Write roc.png, calibration.png and confusion.png into ``out_dir`` (created).

    The confusion matrix and the ROC operating point use ``prob >= threshold``.

    Returns
    -------
    list of Path
        The three files, in that order.
    """
    m = metrics.binary_metrics(y, prob, threshold)  # validate before creating anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_roc(y, prob, out / "roc.png", threshold=threshold),
            plot_calibration(y, prob, out / "calibration.png"),
            plot_confusion(m["confusion"], out / "confusion.png", threshold=threshold)]
