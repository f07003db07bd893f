"""Per-particle weights of the data term: ``Σ_i w_i ‖C_i A_i x − b_i‖²``.

A weight ``w_i ∈ [0, 1]`` multiplies particle ``i``'s whole contribution: for the Fourier
insertion both its numerator ``w c · FFT(b)`` and its ``w c²`` weights (so ``direct`` and ``cg``
solve the weighted least-squares problem), for the gradient methods its per-particle loss.

The insertion applies it without a per-particle path in the kernels: the batch's CTF values are
scaled by ``√w`` and its images by ``√w`` (``w`` for CTF-premultiplied images, whose numerator
carries no CTF factor), which gives ``w c b`` and ``w c²`` on every backend
(:func:`weighted_inputs`). Weights are indexed like the particle set, ``(N,)``.
"""

from __future__ import annotations

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.solvers.batches import ParticleBatch

__all__ = ["check_particle_weights", "weighted_inputs", "residual_factors"]


def check_particle_weights(weights, n_particles: int, name: str = "particle_weights") -> np.ndarray:
    """``weights`` as a float64 ``(N,)`` array in ``[0, 1]``, or a CryogradError naming ``name``."""
    try:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise CryogradError(f"{name} must be numbers in [0, 1]") from None
    if w.shape[0] != int(n_particles):
        raise CryogradError(
            f"{name} must hold one value per particle ({n_particles}), got {len(w)}"
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1):
        raise CryogradError(f"{name} must be numbers in [0, 1]")
    return w


def weighted_inputs(batch: ParticleBatch, weights: np.ndarray) -> ParticleBatch:
    """The batch with images and CTF values scaled so that insertion adds ``w c b`` and ``w c²``.

    Parameters
    ----------
    batch
        Loaded with CTF values (``ctf_values=True``) or without CTF (``ctf`` None).
    weights
        ``(b,)`` weights of the batch's particles.

    Returns
    -------
    ParticleBatch
        ``ctf`` becomes ``√w · c`` (``√w`` broadcast over the half grid without CTF), images
        ``√w · b`` (``w · b`` when premultiplied).
    """
    imgs = batch.images
    w = torch.as_tensor(np.asarray(weights), device=imgs.device, dtype=imgs.dtype).view(-1, 1, 1)
    root = w.sqrt()
    d = imgs.shape[-1]
    if batch.ctf is None:
        ctf = root.expand(len(batch), d, d // 2 + 1).contiguous()
    else:
        ctf = batch.ctf * root
    pm = batch.premultiplied.view(-1, 1, 1).to(imgs.device)
    images = imgs * torch.where(pm, w, root)
    return ParticleBatch(
        batch.indices, images, batch.rotations, batch.shifts_px, ctf, batch.premultiplied
    )


def residual_factors(
    weights: np.ndarray | None, indices: np.ndarray, like: torch.Tensor
) -> torch.Tensor | None:
    """``(b, 1, 1)`` factors ``√w`` of particles ``indices`` for residual images (the squared
    loss of a residual scaled by ``√w`` is ``w`` times the loss), or None without weights."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)[np.asarray(indices, dtype=np.int64)]
    return torch.as_tensor(np.sqrt(w), device=like.device, dtype=like.dtype).view(-1, 1, 1)
