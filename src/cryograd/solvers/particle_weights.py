"""Per-particle weights of the data term: ``Σ_i w_i ‖C_i A_i x − b_i‖²``.

A weight ``w_i ∈ [0, 1]`` multiplies particle ``i``'s whole contribution: for the Fourier
insertion both its numerator ``w c · FFT(b)`` and its ``w c²`` weights (so ``direct`` and ``cg``
solve the weighted least-squares problem), for the gradient methods its per-particle loss.

The insertion applies it without a per-particle path in the kernels: the batch's CTF scale
(``rlnCtfScalefactor``, a factor of the CTF) is multiplied by ``√w`` and its images by ``√w``
(``w`` for CTF-premultiplied images, whose numerator carries no CTF factor), which gives ``w c b``
and ``w c²`` on every backend, the fused ones that compute the CTF from its parameters included
(:func:`weighted_inputs`). Without CTF correction the CTF becomes ``√w`` exactly: parameters with
no defocus, no Cs and amplitude contrast 1 (``γ = −π/2``). Weights are indexed like the particle
set, ``(N,)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cryograd.ctf import CTFParams
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
        Loaded with CTF values (``ctf_values=True``: ``ctf`` is scaled), with CTF parameters
        (``ctf_values=False``: their ``scale`` is), or without CTF (both None).
    weights
        ``(b,)`` weights of the batch's particles.

    Returns
    -------
    ParticleBatch
        CTF ``√w · c`` (``√w`` without CTF), images ``√w · b`` (``w · b`` when premultiplied).
    """
    imgs = batch.images
    w = torch.as_tensor(np.asarray(weights), device=imgs.device, dtype=imgs.dtype).view(-1, 1, 1)
    root = w.sqrt()
    ctf, params = batch.ctf, batch.ctf_params
    if ctf is not None:
        ctf = ctf * root
    else:
        root64 = root.reshape(-1).to(torch.float64)
        if params is None:  # CTF ≡ 1: no defocus, no Cs, amplitude contrast 1
            zeros = torch.zeros_like(root64)
            params = CTFParams(
                zeros, zeros, zeros, zeros + 300.0, zeros, zeros + 1.0, zeros, zeros, root64
            )
        else:
            params = dataclasses.replace(params, scale=params.scale * root64.to(params.scale))
    pm = batch.premultiplied.view(-1, 1, 1).to(imgs.device)
    images = imgs * torch.where(pm, w, root)
    apix = batch.pixel_sizes_angstrom
    if apix is None and params is not None:  # any pixel size: the unit CTF has no frequency term
        apix = torch.ones(len(batch), dtype=torch.float64, device=imgs.device)
    return dataclasses.replace(
        batch, images=images, ctf=ctf, ctf_params=params, pixel_sizes_angstrom=apix
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
