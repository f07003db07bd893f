"""How well a half map explains each of its particles: the statistics ``--robust`` weighs by.

For particle ``i`` with image spectrum ``B_i`` and the projection of its own half's map
``P_i = C_i · T_i · FFT(A_i x_k)`` (its pose, origin and CTF; the Fourier-slice projector's
central slice of the padded map, as :class:`cryograd.forward.ForwardModel` takes it), over the
Fourier samples of a band of shells ``1 ≤ |k| ≤ K`` (where the map holds signal)::

    a_i  = Re⟨B_i, P_i⟩ / ⟨P_i, P_i⟩          (the image's amplitude along its prediction)
    se_i = σ_i / ‖P_i‖                         (its standard error under the noise)
    q_i  = ⟨B_i, B_i⟩ / (n_band · σ_i²)        (the band's power against the noise's)

with ``σ_i²`` the noise power per sample of the image's own outer shells (``|k| > 0.75 · D/2``,
where the CTF envelope leaves no signal). A particle the map explains has ``a_i`` near the half's
common value ``ā`` (the map's shrinkage, < 1) within ``se_i`` and ``q_i`` near 1; pure noise has
``a ≈ 0`` (``ā / se_i`` standard errors off: ``‖P‖/σ`` is the particle's own SNR), an image of
another molecule or at a wrong pose a small ``a``, an ice blob or carbon edge a huge band power.
:func:`standardized_losses` turns both into one non-negative loss per particle in units of the
good particles' spread, robustly (shortest-half location and scale of the :func:`reference_set`):
the amplitude's shortfall (one-sided: it catches noise, blobs, other molecules and wrong poses
alike) and a large excess of band power.

Leave-one-out: the half's map contains particle ``i`` itself, so against the plain projection a
pure-noise image explains itself (box 64, 2,000 particles a half: ``a ≈ 0.37`` against 1.59 for
a good particle), and with half the set noise the shortest half locked onto the noise. Each
prediction is therefore taken with the particle's own contribution removed
(``P_i − h_i (B_i − P_i)``, :func:`self_fraction`), which makes noise ``a / se ~ N(0, 1)``, and
the first round's reference set is the particles with a significant amplitude
(:data:`SIGNAL_Z`), which no amount of noise can be part of.

Every statistic of half ``k`` comes from half ``k``'s map and particles only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cryograd.fourier import rfft2_centered
from cryograd.projectors.base import ImageFilters
from cryograd.projectors.fourier_slice import _cpu
from cryograd.projectors.fourier_slice._cpu import CpuSteps
from cryograd.projectors.fourier_slice.geometry import ExtendedSpectrum
from cryograd.projectors.fourier_slice.projector import FourierSliceProjector
from cryograd.solvers.batches import global_batches, load_batch

__all__ = [
    "ParticleFit",
    "LeaveOneOut",
    "self_fraction",
    "fit_statistics",
    "shorth",
    "standardized_losses",
    "reference_set",
    "band_masks",
]


@dataclass
class ParticleFit:
    """Per-particle fit statistics of one half (arrays ``(n,)``, in the order of ``indices``)."""

    indices: np.ndarray
    amplitude: np.ndarray
    std_error: np.ndarray
    band_power: np.ndarray


def band_masks(box_size: int, band_shell: int, *, device, dtype) -> tuple[torch.Tensor, ...]:
    """``(D, D // 2 + 1)`` sample counts of the scoring band and of the noise shells.

    Samples with ``kx > 0`` count twice (their Friedel mates), the ``kx = 0`` column once."""
    d = int(box_size)
    kx = torch.fft.rfftfreq(d, d=1.0 / d, device=device, dtype=dtype)
    ky = torch.fft.fftfreq(d, d=1.0 / d, device=device, dtype=dtype)
    r = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    mult = torch.where(kx[None, :] > 0, 2.0, 1.0).to(dtype).expand(d, d // 2 + 1)
    band = ((r >= 1) & (r <= band_shell)).to(dtype) * mult
    noise = ((r > 0.75 * (d / 2)) & (r <= d / 2)).to(dtype) * mult
    return band, noise


SELF_KERNEL = (2.0 / 3.0) ** 3
"""``E Σ_v t_k(v)²``: the trilinear kernel's weights at a sample's eight voxels, squared and summed,
averaged over the sample's offsets in the voxel (``∫₀¹ (1 − f)² + f² df = 2/3`` per axis)."""


@dataclass
class LeaveOneOut:
    """What removes each particle's own contribution from its reference slice.

    Attributes
    ----------
    weights
        ``(P, P, P // 2 + 1)`` real ``W = Σ_j w_j c_j²`` of the half's insertion.
    rho
        The Wiener term ``ρ`` the half's map was divided with (units of ``W``).
    particle_weights
        ``(N,)`` the insertion's particle weights ``w`` (indexed like the set), or None (all 1).
    """

    weights: torch.Tensor
    rho: float
    particle_weights: np.ndarray | None = None


def self_fraction(
    box_size: int, padded: int, filters: torch.Tensor, w_slice: torch.Tensor, loo: LeaveOneOut
) -> torch.Tensor:
    """``h_i(k) = κ w_i c_i(k)² / (W_i(k) + ρ)``: the fraction of particle ``i``'s own sample in its
    reference slice (``filters`` ``(b, D, D // 2 + 1)`` ``w_i c_i²``, ``w_slice`` the slice of ``W``
    at its pose).

    ``κ = (2/3)³ · D / P``. The particle puts ``t_k(v) w c b`` (numerator) and ``t_k(v) w c²``
    (weights) into the voxels ``v`` next to its sample ``k`` (trilinear weights ``t``); the map's
    voxel holds ``N / (W + ρ)`` and the slice reads it back with the same weights, so the voxel-wise
    leave-one-out prediction is ``P − h (B − P)`` to first order in ``h`` with
    ``Σ_v t_k(v)² w c² / (W + ρ)``, whose kernel sum is :data:`SELF_KERNEL` on average over the
    sample's offsets. The crop of the padded map to the box (padded again by the projector) keeps
    ``D / P`` of a one-image back-projection, which is flat along the beam over the padded box:
    hence the factor ``D / P``. Neighbouring samples of the same image that share a voxel (and the
    symmetry copies of a particle, whose slices cross its own along lines) are left out: they add
    terms of random phase, not a bias. Measured against maps reconstructed without the particle
    (box 32, 400 particles, ``--pad 2``, brute force): ``κ`` fitted per particle 0.13–0.16 against
    0.148, and the leave-one-out amplitude within 0.03 (rms) of the brute-force one where the
    self-inclusion had moved it by 0.6.
    """
    kappa = SELF_KERNEL * box_size / padded
    return kappa * filters / (w_slice + loo.rho)


def fit_statistics(
    particles,
    indices: np.ndarray,
    volume: torch.Tensor,
    *,
    band_shell: int,
    device,
    dtype,
    use_ctf: bool = True,
    pad: float = 2.0,
    batch_size: int = 256,
    progress: bool = True,
    desc: str = "score",
    leave_one_out: LeaveOneOut | None = None,
) -> ParticleFit:
    """:class:`ParticleFit` of particles ``indices`` against ``volume`` (their half's map).

    Parameters
    ----------
    particles
        :class:`cryograd.particles.ParticleSet` with poses.
    indices
        ``(n,)`` particles of one half.
    volume
        ``(D, D, D)`` that half's map.
    band_shell
        ``K``: the band is shells ``1 .. K`` (``D``-grid units).
    leave_one_out
        The half's insertion weights and Wiener term: particle ``i`` is scored against
        ``P_i − h_i (B_i − P_i)``, its slice with its own contribution taken out
        (:func:`self_fraction`; the first-order leave-one-out prediction of the voxel-wise Wiener
        division ``(N − n_i) / (W − w_i + ρ)``), or None: against the map as it is.

    The predictions are the Fourier-slice projector's central slices of the padded spectrum
    (prepared once), CTF-filtered and shifted, compared with ``rfft2_centered`` of the images: the
    forward model without its round trip through real space.
    """
    d = int(particles.box_size)
    projector = FourierSliceProjector(d, pad=pad)
    steps = projector.steps(device)
    band, noise = band_masks(d, band_shell, device=device, dtype=dtype)
    n_noise = float(noise.sum())
    out = np.zeros((3, len(indices)))
    start = 0
    bar = tqdm(total=len(indices), desc=desc, unit="ptcl", disable=not progress, leave=False)
    with torch.no_grad():
        reader = _SliceReader(steps, volume.to(device=device, dtype=dtype), leave_one_out)
        for chunk in global_batches(np.asarray(indices), batch_size):
            batch = load_batch(particles, chunk, device=device, dtype=dtype, use_ctf=use_ctf)
            filters = ImageFilters(
                batch.model_filter(), batch.shifts_px, float(particles.pixel_size_angstrom),
                batch.optics,
            )  # fmt: skip
            fp, w_slice = reader.read(filters.slice_matrices(batch.rotations), filters)
            fb = rfft2_centered(batch.images)
            if w_slice is not None and leave_one_out is not None:
                own = _own_filters(batch, chunk, leave_one_out)
                h = self_fraction(d, projector.padded_size, own, w_slice, leave_one_out)
                fp = fp - h * (fb - fp)
            stop = start + len(chunk)
            out[:, start:stop] = _band_statistics(fb, fp, band, noise, n_noise).cpu().numpy()
            start = stop
            bar.update(len(chunk))
    bar.close()
    return ParticleFit(np.asarray(indices), out[0], out[1], out[2])


class _SliceReader:
    """The map's slices at a batch's poses, and with leave-one-out the weights' ``W`` too: on the
    compiled CPU loops from one packed ``(re, im, W)`` grid in one pass, else two extractions."""

    def __init__(self, steps, volume: torch.Tensor, loo: LeaveOneOut | None) -> None:
        self.steps = steps
        self.state = steps.prepare(volume)
        self.packed = self.w_ext = None
        if loo is None:
            return
        w = loo.weights.to(device=volume.device, dtype=volume.dtype)
        if isinstance(steps, CpuSteps) and _cpu.usable(self.state):
            ext_w = ExtendedSpectrum.from_spectrum(w)
            self.packed = torch.stack([self.state.real, self.state.imag, ext_w], -1).reshape(-1)
            self.state = None
        else:
            self.w_ext = ExtendedSpectrum.from_spectrum(w.to(self.state.dtype))

    def read(self, matrices: torch.Tensor, filters: ImageFilters):
        """``(fp, w_slice)``: ``ramp · CTF · slice`` and the slice of ``W`` (None without
        leave-one-out), ``(b, D, D // 2 + 1)``."""
        geom = self.steps.geometry(matrices)
        if self.packed is not None:
            d = self.steps.box_size
            out = _cpu.extract_channels(self.packed, geom.rotations, d, geom.padded, 3)
            fp = torch.complex(out[..., 0], out[..., 1])
            filt = filters.half_grid(d, fp.device, out.dtype)
            return (fp if filt is None else fp * filt), out[..., 2]
        fp = self.steps.extract(self.state, geom, filters)
        if self.w_ext is None:
            return fp, None
        return fp, self.steps.extract(self.w_ext, geom, ImageFilters()).abs()


def _own_filters(batch, chunk: np.ndarray, loo: LeaveOneOut) -> torch.Tensor:
    """``w_i c_i²`` of a batch ``(b, D, D // 2 + 1)`` (the model's times the data's CTF factor)."""
    model, data = batch.model_filter(), batch.data_filter()
    d = batch.images.shape[-1]
    shape = (len(chunk), d, d // 2 + 1)
    cc = torch.ones(shape, dtype=batch.images.dtype, device=batch.images.device)
    if model is not None and data is not None:
        cc = (model * data).real.to(cc.dtype)
    if loo.particle_weights is not None:
        w = np.asarray(loo.particle_weights, dtype=np.float64)[np.asarray(chunk)]
        cc = cc * torch.as_tensor(w, device=cc.device, dtype=cc.dtype).view(-1, 1, 1)
    return cc


def _band_statistics(fb, fp, band, noise, n_noise: float) -> torch.Tensor:
    """``(3, b)`` float64: amplitude ``a``, standard error ``se`` and band power ``q``."""
    tiny = torch.finfo(band.dtype).tiny
    pp = (fp.abs().square() * band).sum((-2, -1)).clamp_min(tiny)
    bp = ((fb * fp.conj()).real * band).sum((-2, -1))
    bb = (fb.abs().square() * band).sum((-2, -1))
    sigma2 = ((fb.abs().square() * noise).sum((-2, -1)) / max(n_noise, 1.0)).clamp_min(tiny)
    n_band = float(band.sum())
    return torch.stack([bp / pp, (sigma2 / pp).sqrt(), bb / (n_band * sigma2)]).double()


def shorth(x: np.ndarray) -> tuple[float, float]:
    """Location and scale of the shortest half of ``x``: its midpoint, and its length over
    ``1.349`` (the normal's shortest half is ``±0.674 σ``). Robust to up to 50 % outliers on
    either side."""
    v = np.sort(np.asarray(x, dtype=np.float64)[np.isfinite(x)])
    n = len(v)
    if n == 0:
        return 0.0, 1.0
    h = n // 2 + 1
    if n < 3:
        return float(np.median(v)), max(float(np.ptp(v)), 1e-12)
    widths = v[h - 1 :] - v[: n - h + 1]
    i = int(np.argmin(widths))
    loc = float(np.median(v[i : i + h]))
    scale = float(widths[i]) / 1.349
    return loc, max(scale, 1e-12)


SIGNAL_Z = 3.0
"""First round: the reference particles are those whose amplitude is this many standard errors
above 0 (with leave-one-out scoring pure noise gives ``a / se ~ N(0, 1)``: 0.13 % of it passes)."""


def reference_set(fit: ParticleFit, good: np.ndarray | None = None) -> np.ndarray:
    """``(n,)`` bool: the particles the location and spread of the good ones are taken from.

    ``good`` (the previous round's weights ≥ 0.5) when it holds at least 3; else those whose
    amplitude is significant (``a / se > `` :data:`SIGNAL_Z`) when they are at least 10 % of the
    half (junk without signal along the map, noise above all, cannot then be the reference
    however much of it there is); else every particle.
    """
    n = len(fit.amplitude)
    if good is not None and int(np.sum(good)) >= 3:
        return np.asarray(good, dtype=bool)
    signal = fit.amplitude > SIGNAL_Z * fit.std_error
    if int(signal.sum()) >= max(3, n // 10):
        return signal
    return np.ones(n, dtype=bool)


def standardized_losses(fit: ParticleFit, good: np.ndarray | None = None) -> np.ndarray:
    """One non-negative loss per particle, in units of the good particles' spread.

    ``max(−z_a, z_q / 2, 0)``: ``z_a`` the amplitude's deviation ``(a − ā) / se`` standardised by
    its shortest half (only a shortfall counts: a particle the map explains less than the others),
    ``z_q`` the standardised log band power (only a large excess counts: an ice blob, an edge).
    ``ā`` and both shortest halves are those of the :func:`reference_set` (``good``, a boolean
    mask from the previous round's weights, or in the first round the particles with a
    significant amplitude), so that half of the set or more being noise does not move them.
    """
    a, se = fit.amplitude, fit.std_error
    ref = reference_set(fit, good)
    if good is not None and int(np.sum(good)) >= 3:
        a_ref = float(np.median(a[ref]))
    else:
        a_ref = shorth(a[ref])[0]
    z_a = (a - a_ref) / se
    loc, scale = shorth(z_a[ref])
    z_a = (z_a - loc) / scale
    log_q = np.log(np.clip(fit.band_power, 1e-30, None))
    loc_q, scale_q = shorth(log_q[ref])
    z_q = (log_q - loc_q) / scale_q
    return np.clip(np.maximum(-z_a, 0.5 * z_q), 0.0, None)
