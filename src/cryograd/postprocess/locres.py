"""Local resolution by sliding soft spheres, phase-randomisation corrected (RELION's ``--locres``).

RELION 3.1 (``Postprocessing::run_locres``): sampling points lie on a cubic lattice of step
``ROUND(sampling / pixel_size)`` voxels through the box centre, inside the sphere of radius
``N / 2 - maskrad_px``. At each point a raised-cosine sphere (1 within ``maskrad_px``, 0 beyond
``maskrad_px + edge_px``, :func:`cryograd.postprocess.masks.sphere_mask`) multiplies both half maps
and both half maps with phases randomised beyond the shell ``int(N · pixel_size / randomize_at)``;
the corrected FSC ``(FSC_t - FSC_n) / (1 - FSC_n)`` (from two shells beyond the randomisation) gives
the local resolution ``N · pixel_size / i`` of the last shell ``i`` before it drops below 0.143
(capped at ``minres``). The local-resolution map is the sphere-weighted harmonic mean
``1 / (Σ m_p / d_p / Σ m_p)``, and the filtered map the sphere-weighted mean of the (MTF-corrected,
B-factor-sharpened) average map FSC-weighted with each point's corrected FSC and low-passed at its
resolution.

The FSCs of many points are computed at once: the masked maps vanish outside a sphere of radius
``maskrad_px + edge_px``, so each is cut out in a window of ``W`` voxels (the smallest FFT-friendly
size that holds the sphere) and all windows go through one batched ``rfftn``. The window's FSC is
the box's FSC sampled on ``W // 2 + 1`` shells; it is linearly interpolated to the box's shells.
``exact=True`` uses the full box for every point (RELION's arithmetic, slower).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.fourier import shell_index
from cryograd.postprocess.filters import lowpass_weights_at_shell, relion_round
from cryograd.postprocess.masks import raised_cosine_profile
from cryograd.postprocess.sharpen import MTF, bfactor_weights, mtf_weights
from cryograd.validation import fsc_weight, phase_randomize

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
        Seed of the phase randomisation.
    batch_size
        Sampling points per batched FFT (default: from the window size).
    exact
        Full-box FFTs for every point instead of windows.
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
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("sampling_angstrom", "randomize_at_angstrom", "minres_angstrom"):
            if not getattr(self, name) > 0:
                raise CryogradError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("maskrad_angstrom", "edgewidth_angstrom"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise CryogradError(f"{name} must be >= 0, got {value}")
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
    """

    locres_angstrom: torch.Tensor
    filtered: torch.Tensor
    points: np.ndarray
    resolutions_angstrom: np.ndarray
    weight: torch.Tensor


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


class _ShellSums:
    """Batched shell sums over the half grid of a ``W`` box (Hermitian weights as in validation)."""

    def __init__(self, w: int, device) -> None:
        self.n = w // 2 + 1
        idx = shell_index(w, ndim=3, rfft=True, device=device).clamp(max=self.n)
        self.idx = idx.reshape(-1)
        mult = torch.full((w // 2 + 1,), 2.0, device=device)
        mult[0] = 1.0
        if w % 2 == 0:
            mult[-1] = 1.0
        self.mult = mult.view(1, 1, -1).expand(idx.shape).reshape(-1)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, W, W, W//2+1)`` real -> ``(B, n)`` float64 shell sums."""
        b = values.shape[0]
        flat = (values.reshape(b, -1) * self.mult).to(torch.float64)
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


def _to_box_shells(curves: torch.Tensor, w: int, box: int) -> torch.Tensor:
    """Resample ``(B, W//2+1)`` window FSCs at the box's ``N//2+1`` shell frequencies."""
    if w == box:
        return curves
    fw = torch.arange(w // 2 + 1, dtype=torch.float64, device=curves.device) / w
    fn = torch.arange(box // 2 + 1, dtype=torch.float64, device=curves.device) / box
    hi = torch.searchsorted(fw, fn).clamp(1, fw.numel() - 1)
    t = ((fn - fw[hi - 1]) / (fw[hi] - fw[hi - 1])).clamp(0.0, 1.0)
    return curves[:, hi - 1] * (1 - t) + curves[:, hi] * t


def _corrected(masked: torch.Tensor, rand: torch.Tensor, randomize_at: int) -> torch.Tensor:
    """RELION's ``calculateFSCtrue`` on ``(B, n)`` curves."""
    shells = torch.arange(masked.shape[1], device=masked.device)
    true = (masked - rand) / (1.0 - rand).clamp_min(1e-12)
    return torch.where(shells < randomize_at + 2, masked, true)


def _resolution_shells(fsc_true: torch.Tensor) -> torch.Tensor:
    """Last shell before the first one below 0.143 (0 when shell 0 already is): ``(B,)`` long."""
    below = fsc_true < 0.143
    n = fsc_true.shape[1]
    first = torch.where(
        below.any(dim=1),
        below.float().argmax(dim=1),
        torch.full_like(below[:, 0], n, dtype=torch.long),
    )
    return (first - 1).clamp_min(0)


class _Windows:
    """``(B, W, W, W)`` windows centred at voxels of zero-padded maps: gather, add back."""

    def __init__(self, box: int, w: int, device) -> None:
        self.box, self.w, self.pad = box, w, w // 2 + 1
        self.ar = torch.arange(w, device=device)

    def _index(self, centers: torch.Tensor):
        start = centers - self.w // 2 + self.pad  # (B, 3)
        z = (start[:, 0:1] + self.ar)[:, :, None, None]
        y = (start[:, 1:2] + self.ar)[:, None, :, None]
        x = (start[:, 2:3] + self.ar)[:, None, None, :]
        return z, y, x

    def padded(self, volume: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(volume[None], (self.pad,) * 6)[0]

    def gather(self, padded: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        return padded[self._index(centers)]

    def add(self, padded: torch.Tensor, centers: torch.Tensor, values: torch.Tensor) -> None:
        z, y, x = self._index(centers)
        z, y, x = torch.broadcast_tensors(z, y, x)
        padded.index_put_((z, y, x), values, accumulate=True)

    def gather_wrapped(self, volumes: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """Window ``b`` of ``volumes[b]`` (``(B, N, N, N) -> (B, W, W, W)``), indices taken modulo
        ``N``: what falls outside the box is wrapped, and lands in the margin that :meth:`crop`
        drops."""
        z, y, x = (i % self.box for i in self._index(centers - self.pad))
        bi = torch.arange(len(centers), device=volumes.device).view(-1, 1, 1, 1)
        return volumes[bi, z, y, x]

    def crop(self, padded: torch.Tensor) -> torch.Tensor:
        p, n = self.pad, self.box
        return padded[p : p + n, p : p + n, p : p + n]


def _filter_batch(fsc_true, shells, spec_avg, shell_idx, lowpass: dict, box: int):
    """``(B, N, N, N)`` maps: the average map FSC-weighted by each curve (RELION's cut at the first
    FSC < 1e-4) and low-passed at each resolution shell (RELION's raised-cosine edge).
    ``spec_avg`` is the plain (uncentred) ``rfftn`` of the map; ``lowpass`` caches the filters."""
    n = fsc_true.shape[1]
    ar = torch.arange(n, device=fsc_true.device)
    below = fsc_true < 1e-4
    first = torch.where(below.any(dim=1), below.float().argmax(dim=1), torch.full_like(shells, n))
    wts = torch.where(
        ar[None, :] < first[:, None], fsc_weight(fsc_true), torch.zeros_like(fsc_true)
    )
    wts = torch.cat([wts, torch.zeros_like(wts[:, :1])], dim=1).to(torch.float32)
    filt = wts[:, shell_idx]
    for b, s in enumerate(shells.tolist()):
        if s not in lowpass:
            lowpass[s] = lowpass_weights_at_shell(box, s, device=spec_avg.device).float()
        filt[b] *= lowpass[s]
    return torch.fft.irfftn(spec_avg[None] * filt, s=(box,) * 3, dim=(-3, -2, -1))


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
    cfg = config or LocresConfig()
    dev = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    h1 = torch.as_tensor(half1).to(dev, torch.float32)
    h2 = torch.as_tensor(half2).to(dev, torch.float32)
    box = h1.shape[0]
    apix = float(pixel_size)
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
    w = box if cfg.exact else min(_fast_size(2 * (maskrad + edge) + 3), box)
    p1 = phase_randomize(h1, randomize_at, cfg.seed).to(torch.float32)
    p2 = phase_randomize(h2, randomize_at, cfg.seed + 1).to(torch.float32)
    win = _Windows(box, w, dev)
    maps = [win.padded(v) for v in (h1, h2, p1, p2)]
    idx = torch.arange(w, device=dev, dtype=torch.float32) - w // 2
    d = torch.sqrt(idx.view(-1, 1, 1) ** 2 + idx.view(1, -1, 1) ** 2 + idx.view(1, 1, -1) ** 2)
    sphere = raised_cosine_profile(d.double(), maskrad, edge).to(torch.float32)
    sums = _ShellSums(w, dev)
    spec_avg = torch.fft.rfftn(0.5 * (h1 + h2).double())  # radial filters need no centring
    pre = bfactor_weights(box, cfg.bfactor_a2, apix, device=dev)
    if cfg.mtf is not None:
        pre = pre * mtf_weights(cfg.mtf, box, apix, cfg.mtf_pixel_size, device=dev)
    spec_avg = (spec_avg * pre).to(torch.complex64)
    lowpass: dict[int, torch.Tensor] = {}
    shell_idx = shell_index(box, ndim=3, rfft=True, device=dev).clamp(max=box // 2 + 1)
    acc_fil, acc_inv, acc_w = (torch.zeros_like(maps[0]) for _ in range(3))
    budget = 2**30 if dev.type == "cuda" else 2**28  # bytes of one batch of full-box maps
    bsz = cfg.batch_size or max(1, min(64, budget // (8 * box**3)))
    resolutions = np.zeros(len(pts))
    from tqdm.auto import tqdm

    centers_all = torch.as_tensor(pts, device=dev, dtype=torch.long)
    bar = tqdm(total=len(pts), desc="locres", unit="pt", disable=not progress)
    for b0 in range(0, len(pts), bsz):
        c = centers_all[b0 : b0 + bsz]
        m1, m2, r1, r2 = (win.gather(mp, c) * sphere for mp in maps)
        masked = _to_box_shells(_batch_fsc(m1, m2, sums), w, box)
        rand = _to_box_shells(_batch_fsc(r1, r2, sums), w, box)
        true = _corrected(masked, rand, randomize_at)
        shells = _resolution_shells(true)
        res = torch.where(
            shells > 0,
            box * apix / shells.clamp_min(1).double(),
            torch.full_like(true[:, 0], 999.0),
        ).clamp(max=cfg.minres_angstrom)
        resolutions[b0 : b0 + len(c)] = res.cpu().numpy()
        res_shells = torch.tensor(
            [relion_round(box * apix / float(r)) for r in res], device=dev, dtype=torch.long
        )
        fil = _filter_batch(true, res_shells, spec_avg, shell_idx, lowpass, box)
        win.add(acc_fil, c, win.gather_wrapped(fil, c) * sphere)
        win.add(acc_inv, c, sphere[None] / res.to(torch.float32).view(-1, 1, 1, 1))
        win.add(acc_w, c, sphere[None].expand(len(c), -1, -1, -1))
        bar.update(len(c))
    bar.close()
    wsum = win.crop(acc_w)
    have = wsum > 0
    locres = torch.where(have, wsum / win.crop(acc_inv).clamp_min(1e-30), torch.zeros_like(wsum))
    filtered = torch.where(have, win.crop(acc_fil) / wsum.clamp_min(1e-30), torch.zeros_like(wsum))
    return LocalResolution(
        locres_angstrom=locres.cpu(),
        filtered=filtered.cpu(),
        points=pts,
        resolutions_angstrom=resolutions,
        weight=wsum.cpu(),
    )
