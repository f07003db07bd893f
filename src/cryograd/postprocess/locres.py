"""Local resolution by sliding soft spheres, phase-randomisation corrected (RELION's ``--locres``).

RELION 3.1 (``Postprocessing::run_locres``): sampling points lie on a cubic lattice of step
``ROUND(sampling / pixel_size)`` voxels through the box centre, inside the sphere of radius
``N / 2 - maskrad_px``. At each point a raised-cosine sphere (1 within ``maskrad_px``, 0 beyond
``maskrad_px + edge_px``, :func:`cryograd.postprocess.masks.sphere_mask`) multiplies both half maps
and both half maps with phases randomised beyond the shell ``int(N · pixel_size / randomize_at)``
(RELION's random numbers, :func:`cryograd.postprocess.fsc.randomize_phases_beyond`); the corrected
FSC ``(FSC_t - FSC_n) / (1 - FSC_n)`` (from two shells beyond the randomisation) gives the local
resolution ``N · pixel_size / i`` of the last shell ``i`` before it drops below 0.143 (capped at
``minres``). The local-resolution map is the sphere-weighted harmonic mean
``1 / (Σ m_p / d_p / Σ m_p)``, and the filtered map the sphere-weighted mean of the sum of the
halves (RELION's ``Isum``), MTF-corrected and B-factor-sharpened, FSC-weighted with each point's
corrected FSC and low-passed at its resolution.

Speed, with the same definitions:

- *Fourier crop.* No local resolution is expected better than ``s_lim``, ``crop_factor`` times
  the shell where the global unmasked FSC falls below 0.143. The maps are Fourier-cropped to a box
  ``N_c`` whose Nyquist lies ``margin`` shells beyond ``s_lim``, ``margin`` covering the width of
  the sphere's spectrum, so that masking on the coarse grid leaves the shells up to ``s_lim``
  unchanged. Integer frequencies are the same on both grids: each point's FSC, weights and low-pass
  are RELION's. A point whose corrected FSC is still above 0.143 at ``s_lim`` is computed again on
  the full box.
- *Filtered map in windows.* Each point's filter ends at its low-pass shell, within the crop, and
  only the voxels of its sphere's ``2 (maskrad + edge) + 1`` window are needed: the inverse DFT is
  done one axis at a time, keeping the window's rows after each, which gives RELION's full-box
  values there exactly at a fraction of a full-box inverse FFT per point (the former cost).
- *Windows.* The masked maps vanish outside a sphere of radius ``maskrad_px + edge_px``, so each is
  cut out in a window of ``W`` voxels (the smallest FFT-friendly size that holds the sphere) and all
  windows go through one batched ``rfftn``. The window's FSC is the box's FSC sampled on
  ``W // 2 + 1`` shells; it is linearly interpolated to the box's shells (an approximation: the
  crossing can move by a shell). Windows larger than 0.6 times the (cropped) box are not used:
  the FSCs are then taken on the whole (cropped) box, as RELION does.

``exact=True`` uses the full box for every FFT of every point (RELION's arithmetic, slower). The
maps match ``relion_postprocess --locres`` (``tests/test_postprocess_relion.py``): exactly with
``exact=True`` or ``windows=False``, within a shell at some points with windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.postprocess.filters import relion_round
from cryograd.postprocess.fsc import (
    apply_phases,
    fsc_of_spectra,
    last_shell_above,
    random_phase_grid,
    relion_shell_index,
)
from cryograd.postprocess.masks import raised_cosine_profile
from cryograd.postprocess.relion_random import GlibcRand
from cryograd.postprocess.sharpen import MTF, bfactor_weights, mtf_weights
from cryograd.validation import fsc_weight

__all__ = ["LocresConfig", "LocalResolution", "local_resolution", "sampling_points"]


@dataclass(frozen=True)
class LocresConfig:
    """Settings of :func:`local_resolution` (RELION's ``--locres_*`` options and defaults).

    Attributes
    ----------
    sampling_angstrom
        Lattice step of the sampling points in Å (``--locres_sampling``, 25).
    maskrad_angstrom
        Radius of the sphere's flat part in Å (``--locres_maskrad``; ``None``: half the sampling).
    edgewidth_angstrom
        Width of its raised-cosine edge in Å (``--locres_edgwidth``; ``None``: the sampling).
    randomize_at_angstrom
        Phases are randomised beyond this resolution (``--locres_randomize_at``, 25 Å).
    minres_angstrom
        Worst local resolution reported (``--locres_minres``, 50 Å).
    bfactor_a2
        B-factor applied to the average map before the local filtering (RELION's
        ``--adhoc_bfac``; negative sharpens).
    mtf, mtf_pixel_size
        Detector MTF divided out of the filtered map, and the detector pixel size (default: the
        map's).
    seed
        ``srand`` seed of the phase randomisation (RELION's ``--random_seed``; 0 draws RELION's
        phases).
    batch_size
        Sampling points per batched FFT (default: from the box size).
    exact
        Full-box FFTs for every point: no windows, no Fourier crop.
    windows
        Cut each masked map out in a window just larger than its sphere, where that window is at
        most 0.6 times the (cropped) box (faster; the FSC is then interpolated from the window's
        coarser shells). ``False``, or a larger window: the FSCs on the whole (cropped) box,
        RELION's shells.
    crop_factor
        The Fourier crop keeps shells up to ``crop_factor`` times the shell where the global
        unmasked FSC falls below 0.143 (points that reach it are redone on the full box); 0: no
        crop.
    device
        Torch device (default: CUDA when available, else CPU).
    """

    sampling_angstrom: float = 25.0
    maskrad_angstrom: float | None = None
    edgewidth_angstrom: float | None = None
    randomize_at_angstrom: float = 25.0
    minres_angstrom: float = 50.0
    bfactor_a2: float = 0.0
    mtf: MTF | None = None
    mtf_pixel_size: float | None = None
    seed: int = 0
    batch_size: int | None = None
    exact: bool = False
    crop_factor: float = 2.0
    windows: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("sampling_angstrom", "randomize_at_angstrom", "minres_angstrom"):
            if not getattr(self, name) > 0:
                raise CryogradError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("maskrad_angstrom", "edgewidth_angstrom"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise CryogradError(f"{name} must be >= 0, got {value}")
        if not self.crop_factor >= 0:
            raise CryogradError(f"crop_factor must be >= 0, got {self.crop_factor}")
        if self.batch_size is not None and self.batch_size < 1:
            raise CryogradError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class LocalResolution:
    """Result of :func:`local_resolution`.

    Attributes
    ----------
    locres_angstrom
        ``(N, N, N)`` local resolution in Å (0 where no sphere reaches).
    filtered
        ``(N, N, N)`` the average map filtered to the local resolution.
    points
        ``(P, 3)`` int ``(z, y, x)`` voxels of the sampling points.
    resolutions_angstrom
        ``(P,)`` local resolution at each point in Å.
    weight
        ``(N, N, N)`` sum of the spheres.
    crop_box
        Box of the Fourier crop the points were computed on (``N``: none).
    n_full_box
        Points computed again on the full box (their FSC reached the crop's last exact shell).
    """

    locres_angstrom: torch.Tensor
    filtered: torch.Tensor
    points: np.ndarray
    resolutions_angstrom: np.ndarray
    weight: torch.Tensor
    crop_box: int = 0
    n_full_box: int = 0


def sampling_points(box: int, step_px: int, maskrad_px: int) -> np.ndarray:
    """RELION's lattice: ``(P, 3)`` voxels ``c = N // 2 + x`` with ``x = -N // 2 + m · step`` on
    each axis and ``|x| < N // 2 - maskrad_px``."""
    start = -(box // 2)
    coords = np.arange(start, start + box, max(int(step_px), 1))
    zz, yy, xx = np.meshgrid(coords, coords, coords, indexing="ij")
    pts = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1)
    keep = np.sqrt((pts.astype(np.float64) ** 2).sum(axis=1)) < box // 2 - maskrad_px
    return pts[keep] + box // 2


def _fast_size(n: int) -> int:
    """Smallest ``m >= n`` whose prime factors are 2, 3, 5 and 7, and even."""
    m = max(int(n), 2)
    while True:
        if m % 2 == 0:
            r = m
            for p in (2, 3, 5, 7):
                while r % p == 0:
                    r //= p
            if r == 1:
                return m
        m += 1


def _crop_spectrum(spec: torch.Tensor, box: int, small: int) -> torch.Tensor:
    """``(N, N, N//2+1)`` half spectrum -> ``(n, n, n//2+1)``: the frequencies ``-n/2 <= k < n/2``
    (``0 <= kx <= n/2``), same integer frequencies."""
    h = small // 2
    rows = torch.cat([torch.arange(h), torch.arange(box - h, box)]).to(spec.device)
    return spec[..., rows, :, :][..., :, rows, :][..., : h + 1]


def _pad_spectrum(spec: torch.Tensor, small: int, box: int) -> torch.Tensor:
    """Inverse of :func:`_crop_spectrum`: zeros at the frequencies the small box lacks."""
    h = small // 2
    out = torch.zeros((box, box, box // 2 + 1), dtype=spec.dtype, device=spec.device)
    rows = torch.cat([torch.arange(h), torch.arange(box - h, box)]).to(spec.device)
    out[rows.view(-1, 1), rows.view(1, -1), : h + 1] = spec
    return out


def _crop(spec: torch.Tensor, box: int, small: int) -> torch.Tensor:
    """:func:`_crop_spectrum`, values kept (``(n / N)³``; the spectrum itself when ``n = N``)."""
    return spec if small == box else _crop_spectrum(spec, box, small) * (small / box) ** 3


class _ShellSums:
    """Batched shell sums over the half grid of a ``W`` box (each stored sample once, as RELION's
    ``getFSC``)."""

    def __init__(self, w: int, device) -> None:
        self.n = w // 2 + 1
        self.idx = relion_shell_index(w, device).reshape(-1)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, W, W, W//2+1)`` real -> ``(B, n)`` float64 shell sums."""
        b = values.shape[0]
        flat = values.reshape(b, -1).to(torch.float64)
        out = torch.zeros(b, self.n + 1, dtype=torch.float64, device=values.device)
        out.scatter_add_(1, self.idx.expand(b, -1), flat)
        return out[:, : self.n]


def _batch_fsc(a: torch.Tensor, b: torch.Tensor, sums: _ShellSums) -> torch.Tensor:
    fa = torch.fft.rfftn(a, dim=(-3, -2, -1))
    fb = torch.fft.rfftn(b, dim=(-3, -2, -1))
    cross = sums((fa * fb.conj()).real)
    pa = sums(fa.real**2 + fa.imag**2)
    pb = sums(fb.real**2 + fb.imag**2)
    den = torch.sqrt(pa * pb)
    return torch.where(den > 0, cross / den.clamp_min(1e-300), torch.zeros_like(cross))


def _to_box_shells(curves: torch.Tensor, w: int, scale: float, box: int) -> torch.Tensor:
    """Resample ``(B, W//2+1)`` window FSCs at the box's ``N//2+1`` shells. Window shell ``i`` lies
    at ``i · scale / W`` cycles per full-box voxel (``scale = N_c / N``); shells beyond the last
    window shell repeat its value."""
    if w == box and scale == 1.0:
        return curves
    fw = torch.arange(w // 2 + 1, dtype=torch.float64, device=curves.device) * (scale / w)
    fn = torch.arange(box // 2 + 1, dtype=torch.float64, device=curves.device) / box
    hi = torch.searchsorted(fw, fn).clamp(1, fw.numel() - 1)
    t = ((fn - fw[hi - 1]) / (fw[hi] - fw[hi - 1])).clamp(0.0, 1.0)
    return curves[:, hi - 1] * (1 - t) + curves[:, hi] * t


def _corrected(masked: torch.Tensor, rand: torch.Tensor, randomize_at: int) -> torch.Tensor:
    """RELION's ``calculateFSCtrue`` on ``(B, n)`` curves."""
    masked, rand = masked.clone(), rand.clone()
    for c in (masked, rand):
        c[:, 0] = torch.where(c[:, 0] <= 0, torch.ones_like(c[:, 0]), c[:, 0])
    shells = torch.arange(masked.shape[1], device=masked.device)
    true = (masked - rand) / (1.0 - rand).clamp_min(1e-12)
    return torch.where(shells < randomize_at + 2, masked, true)


def _first_below(curves: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(B,)`` first shell where each curve is below ``threshold`` (``n`` when none is)."""
    below = curves < threshold
    n = curves.shape[1]
    return torch.where(
        below.any(dim=1),
        below.float().argmax(dim=1),
        torch.full_like(below[:, 0], n, dtype=torch.long),
    )


class _Windows:
    """``(B, W, W, W)`` windows of zero-padded ``(N, N, N)`` maps starting at voxels ``starts``
    (``(B, 3)``, may lie outside the box by up to ``W // 2 + 1``): gather, add back."""

    def __init__(self, box: int, w: int, device, *, whole: bool = False) -> None:
        self.box, self.w, self.whole = box, w, whole
        self.pad = 0 if whole else w // 2 + 1
        self.ar = torch.arange(w, device=device)

    def starts(self, positions: torch.Tensor) -> torch.Tensor:
        """Window starts for spheres at ``(B, 3)`` voxel positions: the box itself when ``whole``
        (``W = N``), else the window centred at the nearest voxel."""
        if self.whole:
            return torch.zeros_like(positions, dtype=torch.long)
        return torch.round(positions).long() - self.w // 2

    def padded(self, volume: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(volume[None], (self.pad,) * 6)[0]

    def _slices(self, start) -> tuple[slice, slice, slice]:
        z, y, x = (int(v) + self.pad for v in start)
        return slice(z, z + self.w), slice(y, y + self.w), slice(x, x + self.w)

    def gather(self, padded: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return torch.stack([padded[self._slices(s)] for s in starts.tolist()])

    def add(self, padded: torch.Tensor, starts: torch.Tensor, values: torch.Tensor) -> None:
        for s, v in zip(starts.tolist(), values):
            padded[self._slices(s)] += v

    def gather_wrapped(self, volumes: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Window ``b`` of ``volumes[b]`` (``(B, N, N, N) -> (B, W, W, W)``), indices taken modulo
        ``N``: what falls outside the box is wrapped, and lands in the margin that :meth:`crop`
        drops."""
        out = []
        for v, s in zip(volumes, starts.tolist()):
            z, y, x = ((int(c) + self.ar) % self.box for c in s)
            out.append(v.index_select(0, z).index_select(1, y).index_select(2, x))
        return torch.stack(out)

    def crop(self, padded: torch.Tensor) -> torch.Tensor:
        p, n = self.pad, self.box
        return padded[p : p + n, p : p + n, p : p + n]


def _spheres(
    positions: torch.Tensor, starts: torch.Tensor, w: int, maskrad: float, edge: float
) -> torch.Tensor:
    """``(B, W, W, W)`` float32 raised-cosine spheres centred at ``positions`` (``(B, 3)``
    voxels) on windows starting at ``starts``."""
    idx = torch.arange(w, device=positions.device, dtype=torch.float32)
    off = (positions.to(torch.float64) - starts.to(torch.float64)).to(torch.float32)
    dz = (idx.view(1, -1, 1, 1) - off[:, 0].view(-1, 1, 1, 1)) ** 2
    dy = (idx.view(1, 1, -1, 1) - off[:, 1].view(-1, 1, 1, 1)) ** 2
    dx = (idx.view(1, 1, 1, -1) - off[:, 2].view(-1, 1, 1, 1)) ** 2
    return raised_cosine_profile(torch.sqrt(dz + dy + dx), maskrad, edge)


@dataclass
class _Grid:
    """The maps on one grid (the full box, or a Fourier crop of it) and its bookkeeping.

    ``maps`` are the zero-padded half maps and phase-randomised half maps; ``spec`` the
    pre-sharpened summed map's full-box ``rfftn`` at this grid's frequencies; ``radius`` ``|k|``
    of its half grid (the box's integer frequencies); ``last_shell`` the last box shell whose FSC
    this grid gives exactly.
    """

    box: int
    full_box: int
    maps: list
    spec: torch.Tensor
    radius: torch.Tensor
    win: _Windows
    sums: _ShellSums
    maskrad: float
    edge: float
    last_shell: int

    @property
    def scale(self) -> float:
        return self.box / self.full_box


_WINDOW_FRACTION = 0.6  # larger windows save little and cost accuracy: the whole box instead


def _make_grid(
    spectra: tuple[torch.Tensor, ...],
    full_box: int,
    small: int,
    sphere_px: tuple[int, int],
    windows: bool,
    pre: Callable[[torch.Tensor], torch.Tensor],
) -> _Grid:
    """:class:`_Grid` on a box of ``small`` (``N``: the full grid) from the halves' full-box half
    spectra and random phases ``spectra = (f1, f2, phases1, phases2)``, spheres of
    ``sphere_px = (maskrad, edge)`` full-box voxels; ``pre(radius)`` are the weights of the
    summed map (B-factor, MTF) on a grid of ``|k|``."""
    f1, f2, ph1, ph2 = spectra
    dev = f1.device
    scale = small / full_box
    c1, c2 = _crop(f1, full_box, small), _crop(f2, full_box, small)
    r1 = apply_phases(c1, _crop_spectrum(ph1, full_box, small) if scale < 1 else ph1, small)
    r2 = apply_phases(c2, _crop_spectrum(ph2, full_box, small) if scale < 1 else ph2, small)
    maps = [torch.fft.irfftn(f, s=(small,) * 3).to(torch.float32) for f in (c1, c2, r1, r2)]
    rad_m, edge_m = sphere_px[0] * scale, sphere_px[1] * scale
    w = _fast_size(2 * math.ceil(rad_m + edge_m) + 3)
    w = w if windows and w <= _WINDOW_FRACTION * small else small
    win = _Windows(small, w, dev, whole=w == small)
    k = torch.fft.fftfreq(small, d=1.0 / small, device=dev, dtype=torch.float32)
    kx = torch.fft.rfftfreq(small, d=1.0 / small, device=dev, dtype=torch.float32)
    radius = torch.sqrt(k.view(-1, 1, 1) ** 2 + k.view(1, -1, 1) ** 2 + kx.view(1, 1, -1) ** 2)
    last = small // 2 - _margin(full_box, sphere_px[1]) if scale < 1 else full_box // 2
    return _Grid(
        box=small,
        full_box=full_box,
        maps=[win.padded(v) for v in maps],
        spec=((c1 + c2) * (pre(radius) / scale**3)).to(torch.complex64),
        radius=radius,
        win=win,
        sums=_ShellSums(w, dev),
        maskrad=rad_m,
        edge=edge_m,
        last_shell=last,
    )


def _margin(box: int, edge_px: int) -> int:
    """Shells a soft sphere with an edge of ``edge_px`` voxels spreads a frequency over (its
    spectrum's width, ``1.5 N / edge`` plus 4)."""
    return 4 + math.ceil(1.5 * box / max(edge_px, 1))


def _crop_box(box: int, shell_limit: int, edge_px: int) -> int:
    """Box of the Fourier crop that holds shells up to ``shell_limit`` exactly (``N``: none)."""
    small = _fast_size(2 * (shell_limit + _margin(box, edge_px)))
    return small if small <= 0.8 * box else box


def _lowpass(radius: torch.Tensor, shell: int, full_box: int, edge_shells: int = 2) -> torch.Tensor:
    """RELION's ``lowPassFilterMap`` at ``shell`` on a grid of ``|k|`` (full-box integer
    frequencies): 1 below ``shell - w/2``, raised cosine to 0 at ``shell + w/2``."""
    half = edge_shells // 2
    low, high = max(0.0, (shell - half) / full_box), (shell + half) / full_box
    res = radius / full_box
    w = torch.ones_like(res)
    if high > low:
        w = torch.where(res >= low, 0.5 + 0.5 * torch.cos(math.pi * (res - low) / (high - low)), w)
    return torch.where(res > high, torch.zeros_like(w), w)


def _filter_spectra(
    grid: _Grid,
    fsc_true: torch.Tensor,
    res_shells: list[int],
    shell_idx: torch.Tensor,
    lowpass: dict[int, torch.Tensor],
) -> torch.Tensor:
    """``(B, n, n, n//2+1)`` complex64: ``grid.spec`` FSC-weighted by each curve (RELION's cut at
    the first FSC < 1e-4) and low-passed at each resolution shell."""
    n = fsc_true.shape[1]
    ar = torch.arange(n, device=fsc_true.device)
    first = _first_below(fsc_true, 1e-4)
    zero = torch.zeros_like(fsc_true)
    wts = torch.where(ar[None, :] < first[:, None], fsc_weight(fsc_true), zero)
    wts = torch.cat([wts, torch.zeros_like(wts[:, :1])], dim=1).to(torch.float32)
    filt = wts[:, shell_idx]
    for b, s in enumerate(res_shells):
        if s not in lowpass:
            lowpass[s] = _lowpass(grid.radius, s, grid.full_box)
        filt[b] *= lowpass[s]
    return grid.spec[None] * filt


def _pad_axis(x: torch.Tensor, axis: int, box: int) -> torch.Tensor:
    """Zeros for the frequencies ``n/2 <= |k| < N/2`` along ``axis`` (``n`` its length, even)."""
    n = x.shape[axis]
    if n == box:
        return x
    h = n // 2
    shape = list(x.shape)
    shape[axis] = box
    out = x.new_zeros(shape)
    out.narrow(axis, 0, h).copy_(x.narrow(axis, 0, h))
    out.narrow(axis, box - h, h).copy_(x.narrow(axis, n - h, h))
    return out


def _window_values(spectra: torch.Tensor, starts: torch.Tensor, w: int, box: int) -> torch.Tensor:
    """Full-box maps of half spectra given on a crop's frequencies, only in ``W³`` windows: the
    inverse DFT one axis at a time, keeping the window's ``W`` rows after each (exact, and about
    ``N / W`` times cheaper than a full-box ``irfftn`` per map).

    Parameters
    ----------
    spectra
        ``(B, n, n, n//2+1)`` complex, frequencies ``-n/2 <= k < n/2`` of the full box.
    starts
        ``(B, 3)`` first voxel of each window (taken modulo ``N``).

    Returns
    -------
    torch.Tensor
        ``(B, W, W, W)`` float32.
    """
    b = spectra.shape[0]
    ar = torch.arange(w, device=spectra.device)
    x = torch.fft.ifft(_pad_axis(spectra, 1, box), dim=1)
    rows = ((starts[:, 0:1] + ar) % box).view(b, w, 1, 1)
    x = torch.gather(x, 1, rows.expand(b, w, x.shape[2], x.shape[3]))
    x = torch.fft.ifft(_pad_axis(x, 2, box), dim=2)
    cols = ((starts[:, 1:2] + ar) % box).view(b, 1, w, 1)
    x = torch.gather(x, 2, cols.expand(b, w, w, x.shape[3]))
    if x.shape[3] < box // 2 + 1:
        x = torch.cat([x, x.new_zeros(b, w, w, box // 2 + 1 - x.shape[3])], dim=3)
    x = torch.fft.irfft(x, n=box, dim=3)
    xs = ((starts[:, 2:3] + ar) % box).view(b, 1, 1, w)
    return torch.gather(x, 3, xs.expand(b, w, w, w)).to(torch.float32)


class _BoxSums:
    """Full-box sums over the spheres: ``Σ m_p F_p`` (filtered maps), ``Σ m_p``, ``Σ m_p / d_p``,
    each sphere added in its own ``W = 2 (maskrad + edge) + 1`` window."""

    def __init__(self, box: int, maskrad: int, edge: int, device) -> None:
        r = maskrad + edge
        self.box, self.w = box, 2 * r + 1
        self.win = _Windows(box, self.w, device)
        centre = torch.full((1, 3), float(r), device=device)
        self.sphere = _spheres(centre, torch.zeros(1, 3, device=device), self.w, maskrad, edge)
        self.numerator = self.win.padded(torch.zeros((box,) * 3, device=device))

    def add_filtered(self, centers: torch.Tensor, spectra: torch.Tensor) -> None:
        starts = centers - self.w // 2
        vals = _window_values(spectra, starts, self.w, self.box) * self.sphere
        self.win.add(self.numerator, starts, vals)

    def weights(self, pts: np.ndarray, res: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``Σ m_p`` and ``Σ m_p / d_p``: ``(N, N, N)`` float32 each."""
        dev = self.numerator.device
        acc_w, acc_inv = (self.win.padded(torch.zeros((self.box,) * 3, device=dev)) for _ in "ab")
        for p, r in zip(pts.tolist(), res.tolist()):
            sl = self.win._slices([c - self.w // 2 for c in p])
            acc_w[sl] += self.sphere[0]
            acc_inv[sl] += self.sphere[0] / float(r)
        return self.win.crop(acc_w), self.win.crop(acc_inv)


def _points_on(
    grid: _Grid,
    centers: torch.Tensor,
    shell_idx: torch.Tensor,
    randomize_at: int,
    minres: float,
    apix: float,
    lp: dict[int, torch.Tensor],
    sums: _BoxSums,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local resolution of the points ``centers`` (``(B, 3)`` full-box voxels) on ``grid``;
    their filtered maps times their spheres are added to ``sums``. Returns ``(B,)``
    resolutions (Å) and ``(B,)`` bool: the FSC stayed above 0.143 up to ``grid.last_shell``
    (nothing added for those)."""
    box = grid.full_box
    pos = centers.to(torch.float64) * grid.scale
    starts = grid.win.starts(pos)
    sphere = _spheres(pos, starts, grid.win.w, grid.maskrad, grid.edge)
    m1, m2, r1, r2 = (grid.win.gather(mp, starts) * sphere for mp in grid.maps)
    masked = _to_box_shells(_batch_fsc(m1, m2, grid.sums), grid.win.w, grid.scale, box)
    rand = _to_box_shells(_batch_fsc(r1, r2, grid.sums), grid.win.w, grid.scale, box)
    true = _corrected(masked, rand, randomize_at)
    shells = (_first_below(true, 0.143) - 1).clamp_min(0)
    beyond = (shells + 1 > grid.last_shell) & (grid.box < box)  # the full box has no beyond
    res = torch.where(
        shells > 0, box * apix / shells.clamp_min(1).double(), torch.full_like(true[:, 0], 999.0)
    ).clamp(max=minres)
    keep = ~beyond
    if bool(keep.any()):
        res_shells = [relion_round(box * apix / float(r)) for r in res[keep]]
        spectra = _filter_spectra(grid, true[keep], res_shells, shell_idx, lp)
        # the filters end at shell + 1: the smallest even cube that holds that is enough
        sub = min(grid.box, 2 * (max(res_shells) + 2))
        sums.add_filtered(centers[keep], _crop_spectrum(spectra, grid.box, sub))
    return res, beyond


def _presharpening(
    box: int, cfg: LocresConfig, apix: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``radius -> weights``: RELION's MTF division and B-factor of the summed map (``Isum``) on
    a grid of ``|k|`` (radial: no centring needed)."""

    def weights(radius: torch.Tensor) -> torch.Tensor:
        pre = bfactor_weights(box, cfg.bfactor_a2, apix, radius=radius)
        if cfg.mtf is not None:
            pre = pre * mtf_weights(cfg.mtf, box, apix, cfg.mtf_pixel_size, radius=radius)
        return pre

    return weights


def _run_points(
    grid: _Grid,
    pts: np.ndarray,
    shell_idx: torch.Tensor,
    bsz: int,
    randomize_at: int,
    cfg: LocresConfig,
    apix: float,
    bar: Any,
    sums: _BoxSums,
) -> tuple[np.ndarray, np.ndarray]:
    """All points through :func:`_points_on` in batches: ``(P,)`` resolutions and ``(P,)`` bool
    (to be redone on the full box)."""
    lowpass: dict[int, torch.Tensor] = {}
    res = np.zeros(len(pts))
    beyond = np.zeros(len(pts), dtype=bool)
    dev = grid.spec.device
    for b0 in range(0, len(pts), bsz):
        c = torch.as_tensor(pts[b0 : b0 + bsz], device=dev, dtype=torch.long)
        r, out = _points_on(
            grid, c, shell_idx, randomize_at, cfg.minres_angstrom, apix, lowpass, sums
        )
        res[b0 : b0 + len(c)] = r.cpu().numpy()
        beyond[b0 : b0 + len(c)] = out.cpu().numpy()
        bar.update(int((~out).sum()))
    return res, beyond


def local_resolution(
    half1, half2, pixel_size: float, config: LocresConfig | None = None, *, progress: bool = False
) -> LocalResolution:
    """Local resolution of two half maps (see the module notes).

    Parameters
    ----------
    half1, half2
        ``(N, N, N)`` half maps.
    pixel_size
        Å per pixel.
    config
        :class:`LocresConfig` (RELION's defaults when ``None``).
    progress
        Show a tqdm bar over the sampling points.

    Returns
    -------
    LocalResolution
    """
    from tqdm.auto import tqdm

    cfg = config or LocresConfig()
    dev = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    h1 = torch.as_tensor(half1).to(dev, torch.float64)
    h2 = torch.as_tensor(half2).to(dev, torch.float64)
    box, apix = h1.shape[0], float(pixel_size)
    step = max(relion_round(cfg.sampling_angstrom / apix), 1)
    maskrad = relion_round((cfg.maskrad_angstrom or 0.5 * cfg.sampling_angstrom) / apix)
    edge_a = cfg.edgewidth_angstrom if cfg.edgewidth_angstrom is not None else cfg.sampling_angstrom
    edge = relion_round(edge_a / apix)
    randomize_at = int(box * apix / cfg.randomize_at_angstrom)
    pts = sampling_points(box, step, maskrad)
    if len(pts) == 0:
        raise CryogradError(
            f"no local-resolution sampling point fits in the box: maskrad_angstrom "
            f"({maskrad} px) must be smaller than half the box ({box // 2} px)"
        )
    f1, f2 = torch.fft.rfftn(h1), torch.fft.rfftn(h2)
    rng = GlibcRand(cfg.seed)  # half 1's phases first, then half 2's, as RELION
    spectra = (f1, f2, *(random_phase_grid(box, randomize_at, rng, dev) for _ in range(2)))
    pre = _presharpening(box, cfg, apix)
    small = box
    if not cfg.exact and cfg.crop_factor > 0:
        limit = math.ceil(cfg.crop_factor * max(last_shell_above(fsc_of_spectra(f1, f2, box)), 1))
        small = _crop_box(box, max(limit, randomize_at + 4), edge)
    bar = tqdm(total=len(pts), desc="locres", unit="pt", disable=not progress)
    windows = cfg.windows and not cfg.exact
    grid = _make_grid(spectra, box, small, (maskrad, edge), windows, pre)
    budget = 2**30 if dev.type == "cuda" else 2**28  # bytes of one batch of box-size grids
    bsz = cfg.batch_size or max(1, min(64, budget // (8 * box * small**2)))
    sums = _BoxSums(box, maskrad, edge, dev)
    args = (randomize_at, cfg, apix, bar, sums)
    res, beyond = _run_points(grid, pts, relion_shell_index(small, dev), bsz, *args)
    n_full = int(beyond.sum())
    if n_full:
        full = _make_grid(spectra, box, box, (maskrad, edge), windows, pre)
        bsz = cfg.batch_size or max(1, min(64, budget // (8 * box**3)))
        res[beyond], _ = _run_points(full, pts[beyond], relion_shell_index(box, dev), bsz, *args)
    bar.close()
    wsum, inv = sums.weights(pts, res)
    have = wsum > 0
    locres = torch.where(have, wsum / inv.clamp_min(1e-30), torch.zeros_like(wsum))
    numerator = sums.win.crop(sums.numerator)
    filtered = torch.where(have, numerator / wsum.clamp_min(1e-30), torch.zeros_like(wsum))
    return LocalResolution(
        locres_angstrom=locres.cpu(),
        filtered=filtered.cpu(),
        points=pts,
        resolutions_angstrom=res,
        weight=wsum.cpu(),
        crop_box=small,
        n_full_box=n_full,
    )
