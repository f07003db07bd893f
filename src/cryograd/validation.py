"""Validation: gold-standard half sets, FSC, masks, phase randomisation, resolution, FSC weighting.

Fourier shells follow :func:`cryograd.fourier.shell_index`: shell ``n`` holds the samples with
``n - 0.5 <= |k| < n + 0.5`` (``k`` in integer units), and curves run over shells ``0 .. N // 2``
(up to Nyquist; the corners of the cube beyond Nyquist are left out). Shell ``n`` has the spatial
frequency ``n / (N · pixel_size)`` in 1/Å.

Sums run over the half (``rfftn``) grid with the weight 2 on the samples whose Hermitian partner is
not stored (``0 < kx < N / 2``), so every curve equals the one computed on the full grid.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.fourier import gaussian_blur, irfftn_centered, rfftn_centered, shell_index
from cryograd.io.atomic import atomic_path

__all__ = [
    "FSCResult",
    "fsc",
    "shell_frequencies_inv_angstrom",
    "resolution_at",
    "soft_mask_from_map",
    "phase_randomize",
    "masked_fsc_corrected",
    "compute_fsc_result",
    "fsc_weight",
    "apply_shell_weights",
    "split_halves",
    "shell_sums",
    "tau2_from_fsc",
    "inverse_tau2_from_fsc",
]


# --------------------------------------------------------------------------------------------
# Shell bookkeeping
# --------------------------------------------------------------------------------------------


def _as_volume(volume, name: str = "volume") -> torch.Tensor:
    v = torch.as_tensor(volume)
    if v.ndim != 3 or not (v.shape[0] == v.shape[1] == v.shape[2]):
        raise ValueError(f"{name} must be a cubic (N, N, N) array, got shape {tuple(v.shape)}")
    if not v.is_floating_point():
        v = v.double()
    return v


def _half_grid_multiplicity(box_size: int, device, dtype) -> torch.Tensor:
    """``(1, 1, N // 2 + 1)`` weights: 2 where the Hermitian partner is not stored, else 1."""
    w = torch.full((box_size // 2 + 1,), 2.0, device=device, dtype=dtype)
    w[0] = 1.0
    if box_size % 2 == 0:
        w[-1] = 1.0
    return w.view(1, 1, -1)


def _shells_and_weights(box_size: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Shell index of every half-grid sample (corners beyond Nyquist set to ``n_shells``)."""
    n_shells = box_size // 2 + 1
    idx = shell_index(box_size, ndim=3, rfft=True, device=device).clamp(max=n_shells)
    mult = _half_grid_multiplicity(box_size, device, dtype).expand(idx.shape)
    return idx, mult, n_shells


def shell_sums(
    values: torch.Tensor, shell_idx: torch.Tensor, n_shells: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of ``values`` per shell.

    Parameters
    ----------
    values
        Real values on any grid, e.g. the CTF² weights of a reconstruction.
    shell_idx
        Integer shell of every value, same shape (e.g. ``round(|k_padded| / pad)`` on a padded
        grid, as RELION does). Values with an index ``>= n_shells`` are ignored.
    n_shells
        Number of shells to report.

    Returns
    -------
    sums, counts
        Each ``(n_shells,)`` float64.
    """
    values = torch.as_tensor(values).reshape(-1)
    shell_idx = torch.as_tensor(shell_idx, device=values.device).reshape(-1)
    sums = torch.zeros(n_shells + 1, dtype=torch.float64, device=values.device)
    counts = torch.zeros(n_shells + 1, dtype=torch.float64, device=values.device)
    step = _SHELL_CHUNK  # pieces, so that a large grid makes no float64/int64 copies of itself
    for start in range(0, values.numel(), step):
        idx = shell_idx[start : start + step].long().clamp(0, n_shells)  # n_shells: ignored
        sums += torch.bincount(
            idx, weights=values[start : start + step].to(torch.float64), minlength=n_shells + 1
        )[: n_shells + 1]
        counts += torch.bincount(idx, minlength=n_shells + 1)[: n_shells + 1].to(torch.float64)
    return sums[:n_shells], counts[:n_shells]


_SHELL_CHUNK = 1 << 22


# --------------------------------------------------------------------------------------------
# FSC and resolution
# --------------------------------------------------------------------------------------------


def fsc(map1, map2, *, mask=None) -> torch.Tensor:
    """Fourier shell correlation of two maps.

    ``FSC(n) = Re Σ F1 F2* / sqrt(Σ |F1|² · Σ |F2|²)`` over the samples of shell ``n``.

    Parameters
    ----------
    map1, map2
        ``(N, N, N)`` real maps (torch tensors or numpy arrays) on the same device.
    mask
        Optional ``(N, N, N)`` real-space mask multiplied into both maps first.

    Returns
    -------
    torch.Tensor
        ``(N // 2 + 1,)`` float64 on the maps' device; shell 0 is the DC term. Shells where either
        map has no power get 0.
    """
    v1 = _as_volume(map1, "map1")
    v2 = _as_volume(map2, "map2").to(v1.device)
    if v1.shape != v2.shape:
        raise ValueError(f"maps differ in shape: {tuple(v1.shape)} and {tuple(v2.shape)}")
    if mask is not None:
        m = _as_volume(mask, "mask").to(v1.device)
        if m.shape != v1.shape:
            raise ValueError(
                f"mask shape {tuple(m.shape)} differs from map shape {tuple(v1.shape)}"
            )
        v1 = v1 * m
        v2 = v2 * m
    # transforms in the maps' precision, shell sums in float64
    return _fsc_of_spectra(rfftn_centered(v1), rfftn_centered(v2.to(v1.dtype)))


def _fsc_of_spectra(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """:func:`fsc` of two maps given their ``(N, N, N // 2 + 1)`` half spectra."""
    box = f1.shape[0]
    idx, mult, n_shells = _shells_and_weights(box, f1.device, torch.float64)
    cross, p1, p2 = _fsc_sums(f1, f2, idx, mult, n_shells)
    denom = torch.sqrt(p1 * p2)
    tiny = torch.finfo(torch.float64).tiny
    return torch.where(denom > tiny, cross / denom.clamp_min(tiny), torch.zeros_like(cross))


def _fsc_sums(f1, f2, idx, mult, n_shells: int, planes: int = 16):
    """Per-shell ``Σ Re f1 f2*``, ``Σ |f1|²``, ``Σ |f2|²`` (half-grid multiplicities, float64),
    a few ``z`` planes at a time (no product grids of the whole volume)."""
    out = torch.zeros((3, n_shells + 1), dtype=torch.float64, device=f1.device)
    for z in range(0, f1.shape[0], planes):
        a = torch.view_as_real(f1[z : z + planes])  # (planes, N, N // 2 + 1, 2)
        b = torch.view_as_real(f2[z : z + planes])
        i = idx[z : z + planes].reshape(-1)  # n_shells: beyond Nyquist, dropped below
        m = mult[z : z + planes].reshape(-1)
        terms = ((a * b).sum(-1), a.square().sum(-1), b.square().sum(-1))  # Re a b*, |a|², |b|²
        for k, term in enumerate(terms):
            out[k] += torch.bincount(
                i, weights=m * term.reshape(-1).double(), minlength=n_shells + 1
            )
    return out[0, :n_shells], out[1, :n_shells], out[2, :n_shells]


def shell_frequencies_inv_angstrom(box: int, pixel_size: float) -> torch.Tensor:
    """Frequency of shells ``0 .. N // 2`` in 1/Å, ``n / (N · pixel_size)``: ``(N // 2 + 1,)``."""
    return torch.arange(box // 2 + 1, dtype=torch.float64) / (box * float(pixel_size))


def resolution_at(fsc_curve, threshold: float, box: int, pixel_size: float) -> float:
    """Resolution in Å where an FSC curve first drops below ``threshold``.

    The crossing is searched from shell 1 on (shell 0 is the DC term); the frequency is linearly
    interpolated between the last shell at or above the threshold and the first one below it, and
    the resolution is its inverse.

    When the curve never drops below the threshold up to Nyquist the result is Nyquist-limited:
    ``2 · pixel_size`` (the true resolution may be better; the data cannot show it). When it is
    already below at shell 1 and the interpolation reaches zero frequency the result is ``inf``.

    Parameters
    ----------
    fsc_curve
        ``(N // 2 + 1,)`` FSC per shell.
    threshold
        e.g. 0.143 (gold standard) or 0.5.
    box, pixel_size
        Box size ``N`` and pixel size in Å.

    Returns
    -------
    float
        Resolution in Å.
    """
    curve = torch.as_tensor(fsc_curve).detach().to("cpu", torch.float64).numpy()
    freqs = shell_frequencies_inv_angstrom(box, pixel_size).numpy()[: len(curve)]
    for i in range(1, len(curve)):
        if curve[i] < threshold:
            hi, lo = curve[i - 1], curve[i]
            t = 1.0 if hi == lo else (hi - threshold) / (hi - lo)
            t = min(max(t, 0.0), 1.0)
            f = freqs[i - 1] + t * (freqs[i] - freqs[i - 1])
            return math.inf if f <= 0 else float(1.0 / f)
    return 2.0 * float(pixel_size)


# --------------------------------------------------------------------------------------------
# Masks and phase randomisation
# --------------------------------------------------------------------------------------------


def _distance_to_set(binary: torch.Tensor, max_r: int) -> torch.Tensor:
    """Distance in whole pixels (1 .. max_r, else max_r + 1) of every voxel to a binary set.

    ``distance = min r`` such that the voxel lies in the dilation of the set by a ball of radius
    ``r``, i.e. ``ceil`` of the exact Euclidean distance (squared distances are integers), from
    the separable distance transform of :func:`cryograd.postprocess.masks.squared_distance_to_set`,
    periodic over the array's own shape (as a DFT dilation is).
    """
    from cryograd.postprocess.masks import squared_distance_to_set

    d2 = squared_distance_to_set(binary > 0, max_r, periodic=True)
    distance = torch.ceil(torch.sqrt(d2))
    return distance.masked_fill_(d2 > max_r * max_r, float(max_r + 1))


def soft_mask_from_map(
    volume,
    threshold: float | None = None,
    extend_px: int = 3,
    soft_edge_px: int = 6,
    *,
    lowpass_sigma_px: float = 2.0,
) -> torch.Tensor:
    """A soft mask around the density of a map (as ``relion_mask_create`` makes one).

    The map is low-passed with a Gaussian of ``lowpass_sigma_px`` and binarised at ``threshold``;
    the binary mask is extended by ``extend_px`` pixels and then given a raised-cosine edge
    ``0.5 + 0.5 cos(π (d - extend_px) / soft_edge_px)`` over the next ``soft_edge_px`` pixels, where
    ``d`` is the distance to the binary mask in whole pixels (the smallest ``r`` whose ball dilation
    reaches the voxel; an exact distance transform on the bounding box of the mask plus a margin).

    Parameters
    ----------
    volume
        ``(N, N, N)`` map.
    threshold
        Binarisation threshold on the low-passed map. ``None`` picks it from the map:
        ``median + 0.2 · (max - median)`` of the low-passed map (the median stands for the solvent
        level when the particle fills less than half the box).
    extend_px, soft_edge_px
        Hard extension and width of the soft edge, in pixels.

    Returns
    -------
    torch.Tensor
        ``(N, N, N)`` mask in ``[0, 1]``, the dtype and device of ``volume``.
    """
    v = _as_volume(volume)
    box = v.shape[0]
    work = v.to(torch.float64 if v.dtype == torch.float64 else torch.float32)  # map's precision
    low = gaussian_blur(work, lowpass_sigma_px) if lowpass_sigma_px > 0 else work
    if threshold is None:
        med = float(low.median())
        threshold = med + 0.2 * (float(low.max()) - med)
    binary = low > threshold
    del low, work
    if not bool(binary.any()):
        raise ValueError(
            f"no voxel of the low-passed map lies above the mask threshold {threshold}"
        )
    extend_px = int(extend_px)
    soft_edge_px = int(soft_edge_px)
    max_r = extend_px + soft_edge_px
    # work on the bounding box of the set plus a margin, so the periodic transform cannot wrap
    # (where the margin reaches the box faces the box is periodic, as the map's DFT is)
    nz = torch.nonzero(binary)
    lo = (nz.min(dim=0).values - (max_r + 1)).clamp_min(0).tolist()
    hi = (nz.max(dim=0).values + (max_r + 2)).clamp_max(box).tolist()
    crop = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    distance = torch.full(binary.shape, float(max_r + 1), dtype=torch.float32, device=v.device)
    distance[crop] = _distance_to_set(binary[crop], max_r).float()  # small integers: exact
    mask = torch.zeros_like(distance)
    mask[distance <= extend_px] = 1.0
    if soft_edge_px > 0:
        edge = (distance > extend_px) & (distance <= max_r)
        mask[edge] = 0.5 + 0.5 * torch.cos(math.pi * (distance[edge] - extend_px) / soft_edge_px)
    return mask.to(v.dtype)


def _random_phases(box: int, seed: int, device, dtype=torch.float64) -> torch.Tensor:
    """Unit complex numbers on the half grid with uniform, Hermitian-consistent random phases
    (the DFT of real white noise, normalised, in ``dtype``)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    # drawn in float64 whatever ``dtype``: the same phases (to rounding) in either precision
    noise = torch.randn((box,) * 3, generator=gen, dtype=torch.float64).to(device, dtype)
    spec = torch.fft.rfftn(noise)
    del noise
    return spec.div_(spec.abs().clamp_min_(torch.finfo(dtype).tiny))


def phase_randomize(volume, beyond_shell: int, seed: int) -> torch.Tensor:
    """Replace the Fourier phases beyond a shell by random ones, keeping the amplitudes.

    Samples with ``|k| > beyond_shell`` (RELION's ``randomizePhasesBeyond``: ``k² > index²``) get a
    uniform random phase; the phases are taken from the DFT of real white noise so that the result
    is real (Hermitian symmetry holds). Computed in the map's precision (float32 maps: float32).

    Parameters
    ----------
    volume
        ``(N, N, N)`` map.
    beyond_shell
        Shell index; phases of samples with ``|k| > beyond_shell`` are randomised.
    seed
        Seed of the random phases.

    Returns
    -------
    torch.Tensor
        ``(N, N, N)``, dtype and device of ``volume``.
    """
    v = _as_volume(volume)
    dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    return _phase_randomized(rfftn_centered(v.to(dtype)), beyond_shell, seed).to(v.dtype)


def _phase_randomized(spectrum: torch.Tensor, beyond_shell: int, seed: int) -> torch.Tensor:
    """:func:`phase_randomize` of a map given its ``rfftn_centered`` spectrum (left unchanged):
    the ``(N, N, N)`` real map of the spectrum's real dtype."""
    box = spectrum.shape[0]
    real = torch.float64 if spectrum.dtype == torch.complex128 else torch.float32
    phases = _random_phases(box, seed, spectrum.device, real)
    kx = torch.fft.rfftfreq(box, d=1.0 / box, device=spectrum.device, dtype=real)
    k = torch.fft.fftfreq(box, d=1.0 / box, device=spectrum.device, dtype=real)
    k2 = k.view(-1, 1, 1) ** 2 + k.view(1, -1, 1) ** 2 + kx.view(1, 1, -1) ** 2
    keep = k2 <= float(beyond_shell) ** 2
    del k2
    # unit-modulus DFT of real noise: Hermitian like the spectrum, so |spec|·phases stays real
    phases.mul_(spectrum.abs())
    phases[keep] = spectrum[keep]
    return irfftn_centered(phases, box)


# --------------------------------------------------------------------------------------------
# Masked FSC corrected by phase randomisation (RELION post-processing)
# --------------------------------------------------------------------------------------------


@dataclass
class FSCResult:
    """FSC curves of two half maps and the resolutions read from them.

    Attributes
    ----------
    frequencies
        ``(n_shells,)`` spatial frequency of each shell in 1/Å.
    fsc_unmasked
        ``(n_shells,)``.
    fsc_masked, fsc_corrected
        ``(n_shells,)`` or ``None`` when no mask was used. ``fsc_corrected`` is RELION's
        phase-randomisation-corrected masked FSC.
    resolution_143_angstrom, resolution_05_angstrom
        Resolution at FSC 0.143 and 0.5, in Å, from ``fsc_corrected`` when a mask was used, else
        from ``fsc_unmasked`` (see :func:`resolution_at` for the never-crossing case).
    fsc_randomized_masked
        ``(n_shells,)`` masked FSC of the phase-randomised maps, or ``None``.
    randomize_from_shell
        Shell beyond which phases were randomised, or ``None``.
    """

    frequencies: np.ndarray
    fsc_unmasked: np.ndarray
    fsc_masked: np.ndarray | None
    fsc_corrected: np.ndarray | None
    resolution_143_angstrom: float
    resolution_05_angstrom: float
    fsc_randomized_masked: np.ndarray | None = None
    randomize_from_shell: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def fsc_final(self) -> np.ndarray:
        """The curve the resolution is read from (corrected masked, else unmasked)."""
        return self.fsc_corrected if self.fsc_corrected is not None else self.fsc_unmasked

    def to_dict(self) -> dict:
        """JSON-ready dictionary (lists and floats; ``inf`` resolutions become ``None``)."""

        def arr(a):
            return None if a is None else [float(x) for x in np.asarray(a)]

        def res(x):
            return None if not math.isfinite(x) else float(x)

        return {
            "frequencies_inv_angstrom": arr(self.frequencies),
            "fsc_unmasked": arr(self.fsc_unmasked),
            "fsc_masked": arr(self.fsc_masked),
            "fsc_randomized_masked": arr(self.fsc_randomized_masked),
            "fsc_corrected": arr(self.fsc_corrected),
            "randomize_from_shell": self.randomize_from_shell,
            "resolution_143_angstrom": res(self.resolution_143_angstrom),
            "resolution_05_angstrom": res(self.resolution_05_angstrom),
        }

    def to_csv(self, path) -> Path:
        """Write one row per shell (atomically: temp file in the same folder, then rename).

        Columns: ``shell, frequency_inv_angstrom, resolution_angstrom, fsc_unmasked`` and, when a
        mask was used, ``fsc_masked, fsc_randomized_masked, fsc_corrected``.
        """
        path = Path(path)
        cols = {"fsc_unmasked": self.fsc_unmasked}
        if self.fsc_masked is not None:
            cols["fsc_masked"] = self.fsc_masked
        if self.fsc_randomized_masked is not None:
            cols["fsc_randomized_masked"] = self.fsc_randomized_masked
        if self.fsc_corrected is not None:
            cols["fsc_corrected"] = self.fsc_corrected
        freqs = np.asarray(self.frequencies, dtype=np.float64)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["shell", "frequency_inv_angstrom", "resolution_angstrom", *cols])
            for i, f in enumerate(freqs):
                res = f"{1.0 / f:.4f}" if f > 0 else "inf"
                w.writerow(
                    [
                        i,
                        f"{f:.6f}",
                        res,
                        *(f"{float(np.asarray(c)[i]):.6f}" for c in cols.values()),
                    ]
                )
        return path


def masked_fsc_corrected(
    map1, map2, mask, pixel_size: float, seed: int = 0, *, randomize_below_fsc: float = 0.8
) -> dict:
    """Masked FSC corrected for the mask's own correlation, as RELION's post-processing does.

    Following Chen et al. (2013) *Ultramicroscopy* 135:24 and ``relion_postprocess``: the phases of
    both half maps are randomised (independently) beyond the first shell ``s`` where the unmasked
    FSC drops below ``randomize_below_fsc`` (0.8); the masked FSC of the randomised maps,
    ``FSC_rand``, measures the correlation the mask alone creates, and

    ``FSC_true = (FSC_masked - FSC_rand) / (1 - FSC_rand)``

    for shells ``>= s + 2`` (RELION moves the switch two shells out, away from artefacts at the
    randomisation edge; ``FSC_true = FSC_masked`` below it, and 0 where ``FSC_rand > FSC_masked``).
    When the unmasked FSC never drops below the threshold no phases are randomised and
    ``FSC_true = FSC_masked``.

    Parameters
    ----------
    map1, map2
        ``(N, N, N)`` half maps.
    mask
        ``(N, N, N)`` soft mask.
    pixel_size
        Å per pixel.
    seed
        Seed of the phase randomisation (map2 uses ``seed + 1``).

    Returns
    -------
    dict
        ``frequencies_inv_angstrom``, ``fsc_unmasked``, ``fsc_masked``, ``fsc_randomized_masked``,
        ``fsc_corrected`` (each a ``(N//2+1,)`` float64 tensor; ``fsc_randomized_masked`` is
        ``None`` when nothing was randomised), ``randomize_from_shell`` (int or ``None``),
        ``resolution_143_angstrom`` and ``resolution_05_angstrom`` (from ``fsc_corrected``).
    """
    v1 = _as_volume(map1, "map1")
    v2 = _as_volume(map2, "map2").to(v1.device)
    m = _as_volume(mask, "mask").to(v1.device)
    box = v1.shape[0]
    dtype = torch.float64 if v1.dtype == torch.float64 else torch.float32
    spectra = [rfftn_centered(v.to(dtype)) for v in (v1, v2)]
    f_unmasked = _fsc_of_spectra(spectra[0], spectra[1])
    f_masked = fsc(v1, v2, mask=m)
    below = torch.nonzero(f_unmasked[1:] < randomize_below_fsc)
    randomize_at = int(below[0, 0]) + 1 if below.numel() else None
    if randomize_at is None:
        f_rand = None
        f_true = f_masked.clone()
    else:
        r1 = _phase_randomized(spectra[0], randomize_at, seed)
        r2 = _phase_randomized(spectra[1], randomize_at, seed + 1)
        del spectra
        f_rand = fsc(r1, r2, mask=m)
        f_true = f_masked.clone()
        shells = torch.arange(len(f_true), device=f_true.device)
        use = shells >= randomize_at + 2
        denom = (1.0 - f_rand).clamp_min(1e-12)
        corrected = torch.where(
            f_rand > f_masked, torch.zeros_like(f_masked), (f_masked - f_rand) / denom
        )
        f_true = torch.where(use, corrected, f_masked)
    return {
        "frequencies_inv_angstrom": shell_frequencies_inv_angstrom(box, pixel_size),
        "fsc_unmasked": f_unmasked,
        "fsc_masked": f_masked,
        "fsc_randomized_masked": f_rand,
        "fsc_corrected": f_true,
        "randomize_from_shell": randomize_at,
        "resolution_143_angstrom": resolution_at(f_true, 0.143, box, pixel_size),
        "resolution_05_angstrom": resolution_at(f_true, 0.5, box, pixel_size),
    }


def compute_fsc_result(map1, map2, pixel_size: float, *, mask=None, seed: int = 0) -> FSCResult:
    """:class:`FSCResult` of two half maps: unmasked FSC, and RELION's corrected masked FSC when a
    mask is given (see :func:`masked_fsc_corrected`)."""

    def np_(t):
        return None if t is None else t.detach().to("cpu", torch.float64).numpy()

    v1 = _as_volume(map1, "map1")
    box = v1.shape[0]
    if mask is None:
        f = fsc(v1, map2)
        return FSCResult(
            frequencies=np_(shell_frequencies_inv_angstrom(box, pixel_size)),
            fsc_unmasked=np_(f),
            fsc_masked=None,
            fsc_corrected=None,
            resolution_143_angstrom=resolution_at(f, 0.143, box, pixel_size),
            resolution_05_angstrom=resolution_at(f, 0.5, box, pixel_size),
        )
    d = masked_fsc_corrected(v1, map2, mask, pixel_size, seed)
    return FSCResult(
        frequencies=np_(d["frequencies_inv_angstrom"]),
        fsc_unmasked=np_(d["fsc_unmasked"]),
        fsc_masked=np_(d["fsc_masked"]),
        fsc_corrected=np_(d["fsc_corrected"]),
        resolution_143_angstrom=d["resolution_143_angstrom"],
        resolution_05_angstrom=d["resolution_05_angstrom"],
        fsc_randomized_masked=np_(d["fsc_randomized_masked"]),
        randomize_from_shell=d["randomize_from_shell"],
    )


# --------------------------------------------------------------------------------------------
# FSC weighting
# --------------------------------------------------------------------------------------------


def fsc_weight(fsc_curve) -> torch.Tensor:
    """Per-shell weight ``sqrt(2·FSC / (1 + FSC))`` of the full map (Rosenthal & Henderson 2003),
    0 where ``FSC <= 0``, clipped to ``[0, 1]``. Same shape, dtype and device as ``fsc_curve``."""
    f = torch.as_tensor(fsc_curve)
    if not f.is_floating_point():
        f = f.double()
    pos = f.clamp(min=0.0, max=1.0)
    return torch.sqrt(2.0 * pos / (1.0 + pos)).clamp(0.0, 1.0)


def apply_shell_weights(volume, weights) -> torch.Tensor:
    """Multiply every Fourier sample of a map by the weight of its shell.

    Parameters
    ----------
    volume
        ``(N, N, N)`` map.
    weights
        ``(N // 2 + 1,)`` per-shell weights (e.g. :func:`fsc_weight`). Samples beyond Nyquist (the
        cube's corners) get 0.

    Returns
    -------
    torch.Tensor
        ``(N, N, N)``, dtype and device of ``volume``.
    """
    v = _as_volume(volume)
    box = v.shape[0]
    w = torch.as_tensor(weights, device=v.device, dtype=torch.float64).reshape(-1)
    n_shells = box // 2 + 1
    if w.numel() != n_shells:
        raise ValueError(f"expected {n_shells} shell weights for box {box}, got {w.numel()}")
    w_ext = torch.cat([w, torch.zeros(1, dtype=w.dtype, device=w.device)])
    idx = shell_index(box, ndim=3, rfft=True, device=v.device).clamp_(max=n_shells)
    dtype = torch.float64 if v.dtype == torch.float64 else torch.float32  # the map's precision
    factor = w_ext.to(dtype)[idx]
    del idx
    spec = rfftn_centered(v.to(dtype))
    torch.view_as_real(spec).mul_(factor.unsqueeze(-1))
    del factor
    return irfftn_centered(spec, box).to(v.dtype)


# --------------------------------------------------------------------------------------------
# Half sets
# --------------------------------------------------------------------------------------------


def split_halves(n: int, seed: int, half_set=None) -> tuple[np.ndarray, np.ndarray]:
    """Gold-standard half sets.

    Parameters
    ----------
    n
        Number of particles.
    seed
        Seed of the random split (used only without ``half_set``).
    half_set
        Optional ``(n,)`` ``rlnRandomSubset`` values (1 or 2). When given, the halves follow it.

    Returns
    -------
    idx1, idx2
        Sorted int64 index arrays; without ``half_set`` a seeded random permutation is split into
        ``ceil(n / 2)`` and ``floor(n / 2)`` particles.

    Raises
    ------
    CryogradError
        Fewer than 2 particles, ``half_set`` of the wrong length, with values other than 1 and 2, or
        with an empty half.
    """
    n = int(n)
    if n < 2:
        raise CryogradError(f"gold-standard half sets need at least 2 particles, got {n}")
    if half_set is not None:
        hs = np.asarray(half_set).reshape(-1)
        if hs.shape[0] != n:
            raise CryogradError(f"rlnRandomSubset has {hs.shape[0]} values for {n} particles")
        bad = ~np.isin(hs, (1, 2))
        if bad.any():
            row = int(np.nonzero(bad)[0][0])
            raise CryogradError(
                f"rlnRandomSubset must be 1 or 2; particle {row + 1} has {hs[row]!r}"
            )
        idx1 = np.nonzero(hs == 1)[0].astype(np.int64)
        idx2 = np.nonzero(hs == 2)[0].astype(np.int64)
        if idx1.size == 0 or idx2.size == 0:
            raise CryogradError("rlnRandomSubset puts every particle in one half set")
        return idx1, idx2
    perm = np.random.default_rng(int(seed)).permutation(n)
    n1 = (n + 1) // 2
    return np.sort(perm[:n1]).astype(np.int64), np.sort(perm[n1:]).astype(np.int64)


# --------------------------------------------------------------------------------------------
# RELION's FSC-based Wiener term
# --------------------------------------------------------------------------------------------


def tau2_from_fsc(
    fsc_curve,
    weight_sums,
    weight_counts,
    *,
    whole_instead_of_half: bool = False,
    tau2_fudge: float = 1.0,
    min_fsc: float = 0.001,
    max_fsc: float = 0.999,
) -> torch.Tensor:
    """RELION's signal power ``τ²`` per shell from a half-map FSC and the CTF² weights.

    Implements ``BackProjector::reconstruct`` with ``update_tau2_with_fsc`` (RELION 3/4,
    Scheres 2012 *J. Struct. Biol.* 180:519, eqs. on the Wiener filter), in grid units:

    - ``FSC' = clip(FSC, min_fsc, max_fsc)``; with ``whole_instead_of_half`` (reconstructing the
      whole set from a half-map FSC) first ``FSC' = sqrt(2 FSC / (1 + FSC))`` as RELION does;
    - ``SSNR = tau2_fudge · FSC' / (1 - FSC')``;
    - ``τ² = SSNR / mean_w``, where ``mean_w = weight_sums / weight_counts`` is the average of the
      accumulated ``Σ CTF²`` weights over the grid samples of the shell (RELION's
      ``sigma2 = counter / Σ weight``, ``τ² = SSNR · sigma2``).

    The reconstruction is then ``F = Σ CTF·X / (Σ CTF² + 1/τ²)``: the regulariser ``1/τ² = mean_w /
    SSNR`` is the average data weight divided by the SSNR, so the Wiener term is the noise-to-signal
    ratio in the units of the weights. (Note: "τ² = SSNR · average weight" is not dimensionally
    right; RELION multiplies by the *inverse* of the average weight.)

    Parameters
    ----------
    fsc_curve
        ``(n_shells,)`` half-map FSC.
    weight_sums, weight_counts
        ``(n_shells,)`` sum of the ``Σ CTF²`` weights and number of grid samples per shell (e.g.
        from :func:`shell_sums` on the padded grid with shell ``round(|k_padded| / pad)``).
    whole_instead_of_half
        Convert the half-map FSC to that of the full set first.
    tau2_fudge
        RELION's ``--tau2_fudge`` (1 by default).

    Returns
    -------
    torch.Tensor
        ``(n_shells,)`` float64 ``τ²``; 0 in shells without weight.
    """
    f = torch.as_tensor(fsc_curve).to(torch.float64)
    sums = torch.as_tensor(weight_sums, device=f.device).to(torch.float64)
    counts = torch.as_tensor(weight_counts, device=f.device).to(torch.float64)
    f = f.clamp_min(min_fsc)
    if whole_instead_of_half:
        f = torch.sqrt(2.0 * f / (f + 1.0))
    f = f.clamp_max(max_fsc)
    ssnr = tau2_fudge * f / (1.0 - f)
    have = (sums > 1e-10) & (counts > 0)
    inv_mean_w = torch.where(have, counts / sums.clamp_min(1e-300), torch.zeros_like(sums))
    return ssnr * inv_mean_w


def inverse_tau2_from_fsc(
    fsc_curve,
    weight_sums,
    weight_counts,
    *,
    whole_instead_of_half: bool = False,
    tau2_fudge: float = 1.0,
    max_weight: float | None = None,
) -> torch.Tensor:
    """RELION's Wiener regulariser ``1/τ²`` per shell (see :func:`tau2_from_fsc`).

    Shells where ``τ² = 0`` (no weight) get RELION's fallback ``1 / (0.001 · max_weight)``, with
    ``max_weight`` the largest ``Σ CTF²`` weight of the grid (default: the largest shell mean).

    Returns
    -------
    torch.Tensor
        ``(n_shells,)`` float64, to be added to ``Σ CTF²`` at every grid sample of the shell.
    """
    tau2 = tau2_from_fsc(
        fsc_curve,
        weight_sums,
        weight_counts,
        whole_instead_of_half=whole_instead_of_half,
        tau2_fudge=tau2_fudge,
    )
    if max_weight is None:
        sums = torch.as_tensor(weight_sums, device=tau2.device).to(torch.float64)
        counts = torch.as_tensor(weight_counts, device=tau2.device).to(torch.float64)
        means = sums / counts.clamp_min(1.0)
        max_weight = float(means.max()) if means.numel() else 1.0
    fallback = 1.0 / (0.001 * max(float(max_weight), 1e-300))
    return torch.where(tau2 > 0, 1.0 / tau2.clamp_min(1e-300), torch.full_like(tau2, fallback))
