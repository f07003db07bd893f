"""Sharpening as ``relion_postprocess`` does it: MTF division, FSC weighting, Guinier B-factor.

RELION 3.1 (``Postprocessing::sharpenMap`` and ``makeGuinierPlot`` in ``src/postprocessing.cpp``,
``applyBFactorToMap`` in ``src/fftw.cpp``):

- the Guinier plot is ``ln(mean |F|)`` over the half-grid samples of each shell ``round(|k|) = i``
  against ``1/d² = (i / (N · pixel_size))²`` in 1/Å², for shells up to Nyquist;
- the B-factor is ``4 ×`` the slope of the straight line fitted to the points with
  ``high_res <= d <= low_res`` (10 Å by default) that have a positive amplitude (RELION's
  ``--autob_lowres``, ``--autob_highres``); amplitudes ``∝ exp(-B s² / 4)`` give back ``B``;
- a B-factor multiplies the samples by ``exp(-(B / 4) s²)`` up to Nyquist and zeroes the corners
  beyond it, so a *negative* B sharpens (RELION's sign, as ``--adhoc_bfac -80``);
- FSC weighting multiplies shell ``i`` by ``sqrt(2 FSC / (1 + FSC))`` up to the last shell before
  the FSC first drops below 1e-4 and zeroes everything beyond it;
- the MTF (a STAR table ``rlnResolutionInversePixel``, ``rlnMtfValue`` at the detector's pixel
  ``mtf_angpix``) is interpolated linearly as RELION does and divided out below Nyquist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.postprocess.filters import frequency_radius
from cryograd.postprocess.fsc import relion_shell_index
from cryograd.validation import fsc_weight

__all__ = [
    "GuinierCurve",
    "GuinierFit",
    "guinier_curve",
    "fit_guinier",
    "bfactor_weights",
    "fsc_weighting_weights",
    "MTF",
    "read_mtf",
    "mtf_weights",
]


@dataclass
class GuinierCurve:
    """``ln`` of the mean amplitude per shell.

    Attributes
    ----------
    inv_resolution_squared_a2
        ``(n,)`` ``1/d²`` of shells ``0 .. N // 2`` in 1/Å².
    log_amplitude
        ``(n,)`` ``ln(mean |F|)``; ``nan`` where the shell has no amplitude.
    """

    inv_resolution_squared_a2: np.ndarray
    log_amplitude: np.ndarray


@dataclass
class GuinierFit:
    """Straight line ``ln|F| = intercept + slope / d²`` and the B-factor ``4 · slope`` (Å²)."""

    bfactor_a2: float
    slope_a2: float
    intercept: float
    correlation: float
    low_res_angstrom: float
    high_res_angstrom: float
    n_points: int


def guinier_curve(spectrum: torch.Tensor, pixel_size: float) -> GuinierCurve:
    """Guinier plot of a half-grid spectrum (RELION's ``makeGuinierPlot``).

    Parameters
    ----------
    spectrum
        ``(N, N, N // 2 + 1)`` complex half-grid DFT of a map.
    pixel_size
        Å per pixel.
    """
    box = spectrum.shape[0]
    n = box // 2 + 1
    idx = relion_shell_index(box, spectrum.device).reshape(-1)
    amp = spectrum.abs().reshape(-1).to(torch.float64)
    keep = idx < n
    sums = torch.bincount(idx[keep], weights=amp[keep], minlength=n)[:n]
    counts = torch.bincount(idx[keep], minlength=n)[:n].to(torch.float64)
    mean = (sums / counts.clamp_min(1)).cpu().numpy()
    with np.errstate(divide="ignore"):
        log_amp = np.where(mean > 0, np.log(np.where(mean > 0, mean, 1.0)), np.nan)
    s2 = (np.arange(n, dtype=np.float64) / (box * float(pixel_size))) ** 2
    return GuinierCurve(inv_resolution_squared_a2=s2, log_amplitude=log_amp)


def fit_guinier(
    curve: GuinierCurve, *, low_res_angstrom: float = 10.0, high_res_angstrom: float = 0.0
) -> GuinierFit:
    """Least-squares line through the Guinier points with ``high_res <= d <= low_res``.

    ``high_res_angstrom = 0`` takes every shell with a positive amplitude up to Nyquist (RELION's
    default ``--autob_highres 0``; after FSC weighting that is up to where the FSC first drops to
    zero).

    Raises
    ------
    CryogradError
        Fewer than 2 points in the range.
    """
    s2 = curve.inv_resolution_squared_a2
    y = curve.log_amplitude
    with np.errstate(divide="ignore"):
        d = np.where(s2 > 0, 1.0 / np.sqrt(np.where(s2 > 0, s2, 1.0)), np.inf)
    use = np.isfinite(y) & (d <= low_res_angstrom) & (d >= high_res_angstrom)
    if use.sum() < 2:
        raise CryogradError(
            f"the Guinier fit from {low_res_angstrom:g} Å to {high_res_angstrom:g} Å has "
            f"{int(use.sum())} point(s); at least 2 are needed"
        )
    x, yy = s2[use], y[use]
    xm, ym = x.mean(), yy.mean()
    sxx = float(((x - xm) ** 2).sum())
    sxy = float(((x - xm) * (yy - ym)).sum())
    syy = float(((yy - ym) ** 2).sum())
    slope = sxy / sxx if sxx > 0 else 0.0
    corr = sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0
    return GuinierFit(
        bfactor_a2=4.0 * slope,
        slope_a2=slope,
        intercept=float(ym - slope * xm),
        correlation=corr,
        low_res_angstrom=float(low_res_angstrom),
        high_res_angstrom=float(high_res_angstrom),
        n_points=int(use.sum()),
    )


def bfactor_weights(
    box: int, bfactor_a2: float, pixel_size: float, *, device=None, radius=None
) -> torch.Tensor:
    """``exp(-(B / 4) s²)`` with ``s = |k| / (N · pixel_size)`` up to Nyquist, 0 beyond.

    Returns ``(N, N, N // 2 + 1)`` float64; a negative ``bfactor_a2`` (Å²) sharpens. ``radius``:
    ``|k|`` (the box's integer frequencies) of another grid to evaluate on, e.g. a Fourier crop.
    """
    rad = frequency_radius(box, device=device) if radius is None else radius.double()
    s = rad / (box * float(pixel_size))
    w = torch.exp(-(float(bfactor_a2) / 4.0) * s * s)
    return torch.where(s <= 1.0 / (2.0 * pixel_size) + 1e-12, w, torch.zeros_like(w))


def fsc_weighting_weights(fsc_curve, box: int, *, device=None) -> torch.Tensor:
    """RELION's ``applyFscWeighting``: ``sqrt(2 FSC / (1 + FSC))`` per shell up to the last shell
    before the FSC first drops below 1e-4, 0 beyond. ``fsc_curve`` is ``(N // 2 + 1,)``; returns
    ``(N, N, N // 2 + 1)`` float64."""
    f = torch.as_tensor(np.asarray(fsc_curve, dtype=np.float64), device=device)
    below = torch.nonzero(f < 1e-4)
    last = int(below[0, 0]) - 1 if below.numel() else f.numel() - 1
    w = fsc_weight(f)
    w = torch.where(torch.arange(f.numel(), device=device) <= last, w, torch.zeros_like(w))
    w_ext = torch.cat([w, torch.zeros(1, dtype=w.dtype, device=w.device)])
    idx = relion_shell_index(box, device).clamp(max=f.numel())
    return w_ext[idx]


@dataclass
class MTF:
    """A detector MTF: ``(n,)`` frequencies in 1/pixel of the detector and ``(n,)`` values."""

    resolution_inv_pixel: np.ndarray
    value: np.ndarray
    path: str = ""


def read_mtf(path) -> MTF:
    """Read RELION's MTF STAR file (columns ``rlnResolutionInversePixel``, ``rlnMtfValue``).

    Raises
    ------
    CryogradError
        Missing or unreadable file, missing columns, fewer than 2 rows, values ``<= 0`` or
        frequencies that do not increase.
    """
    import starfile

    p = Path(path)
    if not p.is_file():
        raise CryogradError(f"{p}: MTF file not found")
    try:
        blocks = starfile.read(p, always_dict=True)
    except Exception as exc:  # starfile raises many kinds on malformed text
        raise CryogradError(f"{p}: cannot read the MTF STAR file ({exc})") from None
    table = next(
        (
            b
            for b in blocks.values()
            if hasattr(b, "columns")
            and {"rlnResolutionInversePixel", "rlnMtfValue"} <= set(b.columns)
        ),
        None,
    )
    if table is None:
        raise CryogradError(f"{p}: no table with rlnResolutionInversePixel and rlnMtfValue columns")
    try:
        res = np.asarray(table["rlnResolutionInversePixel"], dtype=np.float64)
        val = np.asarray(table["rlnMtfValue"], dtype=np.float64)
    except (TypeError, ValueError):
        raise CryogradError(f"{p}: MTF columns are not numbers") from None
    if res.size < 2:
        raise CryogradError(f"{p}: the MTF needs at least 2 rows, found {res.size}")
    if not (np.all(np.isfinite(val)) and np.all(np.isfinite(res))) or np.any(val < 1e-10):
        raise CryogradError(f"{p}: MTF values must be positive and finite")
    if res[-1] - res[0] < 1e-10:
        raise CryogradError(f"{p}: MTF frequencies do not increase")
    return MTF(resolution_inv_pixel=res, value=val, path=str(p))


def mtf_weights(
    mtf: MTF,
    box: int,
    pixel_size: float,
    mtf_pixel_size: float | None = None,
    *,
    device=None,
    radius=None,
) -> torch.Tensor:
    """``1 / MTF`` at every half-grid sample below Nyquist (1 elsewhere), as RELION's
    ``divideByMtf``: frequencies ``rlnResolutionInversePixel / mtf_pixel_size`` in 1/Å, linear
    interpolation from the entry ``floor(s / step)`` with ``step = (last - first) / n_rows``,
    clamped to the first and last values. Returns ``(N, N, N // 2 + 1)`` float64 (``radius``: as
    :func:`bfactor_weights`)."""
    apix_mtf = float(pixel_size if mtf_pixel_size is None else mtf_pixel_size)
    x = torch.as_tensor(mtf.resolution_inv_pixel / apix_mtf, device=device)
    y = torch.as_tensor(mtf.value, device=device)
    n = x.numel()
    step = float(x[-1] - x[0]) / n
    rad = frequency_radius(box, device=device) if radius is None else radius.double()
    s = rad / (box * float(pixel_size))
    i0 = torch.floor(s / step).long()
    inner = i0.clamp(0, n - 2)
    x0, x1, y0, y1 = x[inner], x[inner + 1], y[inner], y[inner + 1]
    val = y0 + (y1 - y0) * (s - x0) / (x1 - x0)
    val = torch.where(i0 >= n - 1, y[-1], val)
    val = torch.where(i0 <= 0, y[0], val)
    return torch.where(s < 1.0 / (2.0 * pixel_size), 1.0 / val, torch.ones_like(val))
