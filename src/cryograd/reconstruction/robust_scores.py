"""How well a half map explains each of its particles: the statistics ``--robust`` weighs by.

For particle ``i`` with image spectrum ``B_i`` and the projection of its own half's map
``P_i = C_i · T_i · FFT(A_i x_k)`` (its pose, origin and CTF;
:class:`cryograd.forward.ForwardModel`), over the Fourier samples of a band of shells
``1 ≤ |k| ≤ K`` (where the map holds signal)::

    a_i  = Re⟨B_i, P_i⟩ / ⟨P_i, P_i⟩          (the image's amplitude along its prediction)
    se_i = σ_i / ‖P_i‖                         (its standard error under the noise)
    q_i  = ⟨B_i, B_i⟩ / (n_band · σ_i²)        (the band's power against the noise's)

with ``σ_i²`` the noise power per sample of the image's own outer shells (``|k| > 0.75 · D/2``,
where the CTF envelope leaves no signal). A particle the map explains has ``a_i`` near the half's
common value ``ā`` (the map's shrinkage, < 1) within ``se_i`` and ``q_i`` near 1; pure noise has
``a ≈ 0`` (``ā / se_i`` standard errors off: ``‖P‖/σ`` is the particle's own SNR), an image of
another molecule or at a wrong pose a small ``a``, an ice blob or carbon edge a huge band power.
:func:`standardized_losses` turns both into one non-negative loss per particle in units of the
good particles' spread, robustly (shortest-half location and scale: breakdown 50 %): the
amplitude's shortfall (one-sided: it catches noise, blobs, other molecules and wrong poses alike)
and a large excess of band power.

Every statistic of half ``k`` comes from half ``k``'s map and particles only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cryograd.forward import ForwardModel
from cryograd.solvers.batches import global_batches, load_batch

__all__ = ["ParticleFit", "fit_statistics", "shorth", "standardized_losses", "band_masks"]


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
    """
    d = int(particles.box_size)
    model = ForwardModel(d, float(particles.pixel_size_angstrom), "fourier", pad)
    vol = volume.to(device=device, dtype=dtype)
    band, noise = band_masks(d, band_shell, device=device, dtype=dtype)
    n_band, n_noise = float(band.sum()), float(noise.sum())
    out = np.zeros((3, len(indices)))
    start = 0
    bar = tqdm(total=len(indices), desc=desc, unit="ptcl", disable=not progress, leave=False)
    with torch.no_grad():
        for chunk in global_batches(np.asarray(indices), batch_size):
            batch = load_batch(particles, chunk, device=device, dtype=dtype, use_ctf=use_ctf)
            pred = model.project(
                vol, batch.rotations, batch.shifts_px, batch.model_filter(), optics=batch.optics
            )
            fb = torch.fft.rfft2(batch.images)
            fp = torch.fft.rfft2(pred)
            pp = (fp.abs().square() * band).sum((-2, -1))
            bp = ((fb * fp.conj()).real * band).sum((-2, -1))
            bb = (fb.abs().square() * band).sum((-2, -1))
            sigma2 = (fb.abs().square() * noise).sum((-2, -1)) / max(n_noise, 1.0)
            sigma2 = sigma2.clamp_min(torch.finfo(dtype).tiny)
            pp = pp.clamp_min(torch.finfo(dtype).tiny)
            stop = start + len(chunk)
            out[0, start:stop] = (bp / pp).double().cpu().numpy()
            out[1, start:stop] = (sigma2 / pp).sqrt().double().cpu().numpy()
            out[2, start:stop] = (bb / (n_band * sigma2)).double().cpu().numpy()
            start = stop
            bar.update(len(chunk))
    bar.close()
    return ParticleFit(np.asarray(indices), out[0], out[1], out[2])


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


def standardized_losses(fit: ParticleFit, good: np.ndarray | None = None) -> np.ndarray:
    """One non-negative loss per particle, in units of the good particles' spread.

    ``max(−z_a, z_q / 2, 0)``: ``z_a`` the amplitude's deviation ``(a − ā) / se`` standardised by
    its shortest half (only a shortfall counts: a particle the map explains less than the others),
    ``z_q`` the standardised log band power (only a large excess counts: an ice blob, an edge).
    ``ā`` is the median amplitude of ``good`` (a boolean mask from the previous round's weights)
    or, in the first round, the shortest half's location of ``a``.
    """
    a, se = fit.amplitude, fit.std_error
    if good is not None and int(np.sum(good)) >= 3:
        a_ref = float(np.median(a[good]))
    else:
        a_ref = shorth(a)[0]
    z_a = (a - a_ref) / se
    loc, scale = shorth(z_a)
    z_a = (z_a - loc) / scale
    log_q = np.log(np.clip(fit.band_power, 1e-30, None))
    loc_q, scale_q = shorth(log_q)
    z_q = (log_q - loc_q) / scale_q
    return np.clip(np.maximum(-z_a, 0.5 * z_q), 0.0, None)
