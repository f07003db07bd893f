"""Figures of ``cryograd postprocess``: the Guinier plot and the local-resolution histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryograd.plots import save_figure_atomic

__all__ = ["plot_guinier", "plot_locres_histogram"]


def plot_guinier(path, result) -> Path:
    """``ln |F|`` against ``1/d²`` for every Guinier curve of a
    :class:`~cryograd.postprocess.run.PostprocessResult`, with the fitted line and its range."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for label, curve in result.guinier.items():
        ax.plot(curve.inv_resolution_squared_a2, curve.log_amplitude, label=label, lw=1.3)
    fit = result.guinier_fit
    if fit is not None:
        x = result.guinier["weighted"].inv_resolution_squared_a2
        lo = 1.0 / fit.low_res_angstrom**2
        hi = 1.0 / fit.high_res_angstrom**2 if fit.high_res_angstrom > 0 else float(x.max())
        xs = np.linspace(lo, hi, 20)
        ax.plot(xs, fit.intercept + fit.slope_a2 * xs, "k--", lw=1, label="fit")
    ax.set_xlabel("1/d² (1/Å²)")
    ax.set_ylabel("ln |F|")
    ax.set_title(f"Guinier plot, B = {result.bfactor_a2:.1f} Å²")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure_atomic(fig, path)


def plot_locres_histogram(path, locres_angstrom, mask=None) -> Path:
    """Histogram of the local resolution (Å) inside ``mask > 0.5`` (else where it is defined)."""
    from matplotlib.figure import Figure

    vals = np.asarray(locres_angstrom, dtype=np.float64)
    sel = vals[np.asarray(mask) > 0.5] if mask is not None else vals[vals > 0]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    if sel.size:
        ax.hist(sel, bins=40 if np.ptp(sel) > 1e-6 * np.abs(sel).max() else 1, color="tab:blue")
        ax.axvline(
            float(np.median(sel)), color="red", ls=":", label=f"median {np.median(sel):.2f} Å"
        )
        ax.legend(fontsize="small")
    ax.set_xlabel("local resolution (Å)")
    ax.set_ylabel("voxels")
    ax.set_title("local resolution" + (" inside the mask" if mask is not None else ""))
    return save_figure_atomic(fig, path)
