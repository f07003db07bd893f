"""FSC curves with ``relion_postprocess``'s arithmetic and its phase randomisation.

RELION 3.1 (``getFSC`` in ``src/fftw.cpp``, ``randomizePhasesBeyond``, ``Postprocessing::run``
and ``calculateFSCtrue`` in ``src/postprocessing.cpp``):

- the FSC sums ``Re F1 F2*``, ``|F1|²`` and ``|F2|²`` over the samples of the half (``rfftn``)
  grid once each (no Hermitian multiplicity) in shells ``ROUND(|k|) < N // 2 + 1``;
- phases are randomised beyond shell ``s`` at every half-grid sample with ``|k|² >= s²``, visited
  in C order (``z``, ``y``, then ``x``), each with ``rnd_unif(0, 2π)`` from glibc's ``rand()``
  seeded by ``srand(--random_seed)`` (:mod:`cryograd.postprocess.relion_random`); half 1 is drawn
  first, then half 2 from the same stream; the inverse transform keeps the Hermitian part of the
  ``x = 0`` and ``x = N / 2`` planes (what a complex-to-real FFT of such a spectrum gives);
- the shell ``s`` is the first ``i > 0`` where the unmasked FSC drops below 0.8; the corrected FSC
  is the masked one below ``s + 2`` and ``(FSC_m - FSC_r) / (1 - FSC_r)`` from there (shell 0 of a
  masked curve that is ``<= 0`` is set to 1 first);
- when the unmasked FSC stays above 0.143 further out than the corrected one, RELION uses the
  unmasked curve (unless ``--force_mask``).

With the same seed the phase-randomised FSC is RELION's to rounding, so are the resolution, the
Guinier fit and the sharpened map.
"""

from __future__ import annotations

import functools

import torch

from cryograd.postprocess.relion_random import GlibcRand, relion_uniform_phases
from cryograd.validation import FSCResult, resolution_at, shell_frequencies_inv_angstrom

__all__ = [
    "relion_shell_index",
    "relion_fsc",
    "fsc_of_spectra",
    "randomize_phases_beyond",
    "randomize_spectrum_phases",
    "random_phase_grid",
    "apply_phases",
    "relion_fsc_result",
    "last_shell_above",
]


def _squared_radius(box: int, device) -> torch.Tensor:
    """``|k|²`` (integers) of every half-grid sample: ``(N, N, N // 2 + 1)`` int64."""
    k = torch.fft.fftfreq(box, d=1.0 / box, device=device).round().long()
    kx = torch.fft.rfftfreq(box, d=1.0 / box, device=device).round().long()
    return k.view(-1, 1, 1) ** 2 + k.view(1, -1, 1) ** 2 + kx.view(1, 1, -1) ** 2


@functools.lru_cache(maxsize=4)
def _shell_index_cached(box: int, device: str) -> torch.Tensor:
    r2 = _squared_radius(box, device)
    lut = torch.floor(torch.sqrt(torch.arange(int(r2.max()) + 1, device=device) + 0.0) + 0.5)
    return lut.long().clamp(max=box // 2 + 1)[r2]


def relion_shell_index(box: int, device=None) -> torch.Tensor:
    """RELION's shell ``ROUND(|k|)`` of every half-grid sample, clamped to ``N // 2 + 1`` (beyond
    Nyquist): ``(N, N, N // 2 + 1)`` int64 (cached; do not modify)."""
    return _shell_index_cached(int(box), str(torch.device(device or "cpu")))


def fsc_of_spectra(f1: torch.Tensor, f2: torch.Tensor, box: int) -> torch.Tensor:
    """RELION's ``getFSC`` from two ``(N, N, N // 2 + 1)`` half spectra: ``(N // 2 + 1,)``
    float64 (0 where a shell has no power)."""
    n = box // 2 + 1
    idx = relion_shell_index(box, f1.device).reshape(-1)
    a, b = f1.reshape(-1), f2.reshape(-1)
    terms = ((a * b.conj()).real, a.real**2 + a.imag**2, b.real**2 + b.imag**2)
    sums = [torch.bincount(idx, weights=t.double(), minlength=n + 1)[:n] for t in terms]
    den = torch.sqrt(sums[1] * sums[2])
    return torch.where(den > 0, sums[0] / den.clamp_min(1e-300), torch.zeros_like(den))


def relion_fsc(map1: torch.Tensor, map2: torch.Tensor) -> torch.Tensor:
    """RELION's ``getFSC`` of two ``(N, N, N)`` maps: ``(N // 2 + 1,)`` float64."""
    f1 = torch.fft.rfftn(map1.to(torch.float64))
    f2 = torch.fft.rfftn(map2.to(torch.float64))
    return fsc_of_spectra(f1, f2, map1.shape[-1])


def _hermitian_planes(spec: torch.Tensor, box: int) -> torch.Tensor:
    """Replace the ``x = 0`` (and, for even ``N``, ``x = N / 2``) planes of a half spectrum by
    their Hermitian parts ``(P(k) + conj(P(-k))) / 2``."""
    planes = [0, box // 2] if box % 2 == 0 else [0]
    for x in planes:
        p = spec[:, :, x]
        partner = torch.roll(torch.flip(p, dims=(0, 1)), shifts=(1, 1), dims=(0, 1)).conj()
        spec[:, :, x] = 0.5 * (p + partner)
    return spec


def random_phase_grid(box: int, shell: int, rng: GlibcRand, device=None) -> torch.Tensor:
    """The phases ``randomizePhasesBeyond`` gives the samples with ``|k|² >= shell²``, in C order
    from ``rng``: ``(N, N, N // 2 + 1)`` float64 radians, NaN where the phase is kept."""
    select = _squared_radius(box, device) >= int(shell) ** 2
    out = torch.full(select.shape, float("nan"), dtype=torch.float64, device=device)
    out[select] = torch.from_numpy(relion_uniform_phases(rng, int(select.sum()))).to(device)
    return out


def apply_phases(spec: torch.Tensor, phases: torch.Tensor, box: int) -> torch.Tensor:
    """``spec`` (a half spectrum, or a Fourier crop of one with ``box`` its size) with the phases
    of :func:`random_phase_grid` (cropped alike), then the Hermitian parts of the ``x = 0`` and
    ``x = box / 2`` planes: a new complex128 tensor, ready for ``irfftn``."""
    s = spec.to(torch.complex128)
    out = torch.where(torch.isnan(phases), s, torch.polar(s.abs(), phases.nan_to_num()))
    return _hermitian_planes(out, box)


def randomize_spectrum_phases(
    spec: torch.Tensor, box: int, shell: int, rng: GlibcRand
) -> torch.Tensor:
    """The half spectrum of :func:`randomize_phases_beyond` from the ``rfftn`` of a map (a new
    ``(N, N, N // 2 + 1)`` complex128 tensor, ready for ``irfftn``)."""
    return apply_phases(spec, random_phase_grid(box, shell, rng, spec.device), box)


def randomize_phases_beyond(volume: torch.Tensor, shell: int, rng: GlibcRand) -> torch.Tensor:
    """RELION's ``randomizePhasesBeyond``: ``(N, N, N)`` map with the phases of every half-grid
    sample with ``|k|² >= shell²`` drawn from ``rng`` (C order), amplitudes kept; float64."""
    box = volume.shape[-1]
    spec = randomize_spectrum_phases(torch.fft.rfftn(volume.to(torch.float64)), box, shell, rng)
    return torch.fft.irfftn(spec, s=(box,) * 3)


def last_shell_above(curve, threshold: float = 0.143) -> int:
    """RELION's loop: the last shell ``i`` before the curve first drops below ``threshold`` (0 if
    shell 0 does)."""
    c = torch.as_tensor(curve)
    below = torch.nonzero(c < threshold)
    return int(below[0, 0]) - 1 if below.numel() else c.numel() - 1


def relion_fsc_result(
    half1: torch.Tensor,
    half2: torch.Tensor,
    pixel_size: float,
    mask: torch.Tensor | None,
    *,
    seed: int = 0,
    force_mask: bool = False,
) -> FSCResult:
    """Unmasked, masked, phase-randomised masked and corrected FSC as ``relion_postprocess``.

    Parameters
    ----------
    half1, half2
        ``(N, N, N)`` half maps.
    pixel_size
        Å per pixel.
    mask
        ``(N, N, N)`` mask in ``[0, 1]`` or ``None`` (unmasked FSC only).
    seed
        ``srand`` seed of the randomisation (RELION's ``--random_seed``, 0).
    force_mask
        Keep the corrected curve when the unmasked one reaches further (``--force_mask``).

    Returns
    -------
    FSCResult
        ``extra["used_unmasked"]`` says whether RELION's fallback to the unmasked FSC applied.
    """
    box = half1.shape[-1]
    freqs = shell_frequencies_inv_angstrom(box, pixel_size).numpy()
    unmasked = relion_fsc(half1, half2)
    if mask is None:
        return FSCResult(
            frequencies=freqs,
            fsc_unmasked=unmasked.numpy(),
            fsc_masked=None,
            fsc_corrected=None,
            resolution_143_angstrom=resolution_at(unmasked, 0.143, box, pixel_size),
            resolution_05_angstrom=resolution_at(unmasked, 0.5, box, pixel_size),
        )
    masked = relion_fsc(half1 * mask, half2 * mask)
    below = torch.nonzero(unmasked[1:] < 0.8)
    corrected = masked.clone()
    rand = None
    randomize_at = int(below[0, 0]) + 1 if below.numel() else None
    if randomize_at is not None:
        rng = GlibcRand(seed)
        r1 = randomize_phases_beyond(half1, randomize_at, rng)
        r2 = randomize_phases_beyond(half2, randomize_at, rng)
        rand = relion_fsc(r1 * mask, r2 * mask)
        for curve in (masked, rand):
            if curve[0] <= 0:
                curve[0] = 1.0
        shells = torch.arange(masked.numel())
        true = (masked - rand) / (1.0 - rand)
        corrected = torch.where(shells < randomize_at + 2, masked, true)
    used_unmasked = not force_mask and last_shell_above(unmasked) > last_shell_above(corrected)
    final = unmasked if used_unmasked else corrected
    return FSCResult(
        frequencies=freqs,
        fsc_unmasked=unmasked.numpy(),
        fsc_masked=masked.numpy(),
        fsc_corrected=final.numpy(),
        resolution_143_angstrom=resolution_at(final, 0.143, box, pixel_size),
        resolution_05_angstrom=resolution_at(final, 0.5, box, pixel_size),
        fsc_randomized_masked=None if rand is None else rand.numpy(),
        randomize_from_shell=randomize_at,
        extra={"used_unmasked": bool(used_unmasked)},
    )
