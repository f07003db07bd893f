"""Figures: FSC curves and training losses, drawn with matplotlib's Agg canvas and saved atomically.

The figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, so the
global pyplot backend is never touched (safe on headless nodes and inside notebooks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cryograd.io.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "fsc_figure",
    "loss_figure",
    "plot_fsc",
    "plot_fsc_result",
    "plot_loss",
    "save_figure_atomic",
]


def save_figure_atomic(fig, path) -> Path:
    """Save a figure to a temporary file in the destination folder, then rename it into place.

    The format comes from the suffix of ``path`` (``.png``, ``.pdf``, ``.svg``; default png).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")
    return path


def fsc_figure(
    frequencies_inv_angstrom,
    curves: Mapping[str, Sequence[float] | np.ndarray],
    *,
    resolution_angstrom: float | None = None,
    threshold: float = 0.143,
    title: str | None = None,
) -> Figure:
    """Figure of FSC curves against spatial frequency, the threshold line and the resolution marked.

    Parameters
    ----------
    frequencies_inv_angstrom
        ``(n_shells,)`` shell frequencies in 1/Å.
    curves
        Label -> ``(n_shells,)`` FSC values; ``None`` values are skipped.
    resolution_angstrom
        Resolution to mark (a vertical line at ``1 / resolution`` and a label); ``None`` or
        ``inf`` marks nothing.
    threshold
        Horizontal threshold line (0.143 by default).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: the curves, a dashed line at ``threshold``, a dotted vertical line at the
        resolution.
    """
    from matplotlib.figure import Figure

    freqs = np.asarray(frequencies_inv_angstrom, dtype=np.float64)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for label, values in curves.items():
        if values is None:
            continue
        values = np.asarray(values, dtype=np.float64)
        ax.plot(freqs[: len(values)], values, label=label, lw=1.5)
    ax.axhline(threshold, color="grey", ls="--", lw=1, label=f"FSC = {threshold:g}")
    ax.axhline(0.0, color="black", lw=0.5)
    if resolution_angstrom is not None and math.isfinite(resolution_angstrom):
        f = 1.0 / resolution_angstrom
        ax.axvline(f, color="red", ls=":", lw=1)
        ax.annotate(
            f"{resolution_angstrom:.2f} Å",
            xy=(f, threshold),
            xytext=(5, 10),
            textcoords="offset points",
            color="red",
        )
    ax.set_xlim(0, freqs.max() if freqs.size else 1)
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    # resolution in Å along the top, at round values inside the plotted range
    fmax = float(freqs.max()) if freqs.size else 1.0
    candidates = [100, 50, 30, 20, 15, 10, 8, 6, 5, 4, 3, 2.5, 2, 1.5, 1.2, 1]
    ticks = [r for r in candidates if 0 < 1.0 / r <= fmax]
    ticks = [r for i, r in enumerate(ticks) if i == 0 or 1.0 / r - 1.0 / ticks[i - 1] > fmax / 14]
    top = ax.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
    top.set_xticks([1.0 / r for r in ticks], [f"{r:g}" for r in ticks])
    top.set_xlabel("resolution (Å)")
    return fig


def plot_fsc(
    path,
    frequencies_inv_angstrom,
    curves: Mapping[str, Sequence[float] | np.ndarray],
    *,
    resolution_angstrom: float | None = None,
    threshold: float = 0.143,
    title: str | None = None,
) -> Path:
    """Write :func:`fsc_figure` to ``path`` atomically (format from the suffix)."""
    fig = fsc_figure(
        frequencies_inv_angstrom,
        curves,
        resolution_angstrom=resolution_angstrom,
        threshold=threshold,
        title=title,
    )
    return save_figure_atomic(fig, path)


def plot_fsc_result(path, result, *, title: str | None = None) -> Path:
    """Plot a :class:`cryograd.validation.FSCResult`: every curve it holds, the 0.143 line and the
    0.143 resolution."""
    curves = {
        "unmasked": result.fsc_unmasked,
        "masked": result.fsc_masked,
        "phase-randomised masked": result.fsc_randomized_masked,
        "corrected": result.fsc_corrected,
    }
    return plot_fsc(
        path,
        result.frequencies,
        curves,
        resolution_angstrom=result.resolution_143_angstrom,
        threshold=0.143,
        title=title,
    )


def loss_figure(
    train_loss: Sequence[float] | np.ndarray,
    validation_loss: Sequence[float] | np.ndarray | None = None,
    *,
    best_epoch: int | None = None,
    xlabel: str = "epoch",
    ylabel: str = "loss",
    log_y: bool = False,
    title: str | None = None,
    first_epoch: int = 1,
) -> Figure:
    """Figure of training and validation loss per epoch.

    Parameters
    ----------
    train_loss, validation_loss
        ``(n_epochs,)`` values; the validation curve is optional.
    best_epoch
        Epoch to mark with a vertical line, e.g. the one whose map is kept (same numbering as
        the curves).
    log_y
        Logarithmic y axis (only when every value is positive).
    first_epoch
        Number of the first value: 1 by default, 0 when the lists start with the loss of the
        starting map (before any training).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    train = np.asarray(train_loss, dtype=np.float64)
    ax.plot(np.arange(train.size) + first_epoch, train, marker="o", ms=3, label="train")
    values = [train]
    if validation_loss is not None:
        val = np.asarray(validation_loss, dtype=np.float64)
        ax.plot(np.arange(val.size) + first_epoch, val, marker="s", ms=3, label="validation")
        values.append(val)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"best epoch {best_epoch}")
    allv = np.concatenate(values) if values else np.zeros(0)
    if log_y and allv.size and np.all(allv[np.isfinite(allv)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_loss(
    path,
    train_loss: Sequence[float] | np.ndarray,
    validation_loss: Sequence[float] | np.ndarray | None = None,
    *,
    best_epoch: int | None = None,
    xlabel: str = "epoch",
    ylabel: str = "loss",
    log_y: bool = False,
    title: str | None = None,
    first_epoch: int = 1,
) -> Path:
    """Write :func:`loss_figure` to ``path`` atomically (format from the suffix)."""
    fig = loss_figure(
        train_loss,
        validation_loss,
        best_epoch=best_epoch,
        xlabel=xlabel,
        ylabel=ylabel,
        log_y=log_y,
        title=title,
        first_epoch=first_epoch,
    )
    return save_figure_atomic(fig, path)
