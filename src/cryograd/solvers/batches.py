"""Particle batches for the solvers: images, poses and CTFs on the compute device.

Every solver streams particles the same way: the global index list is cut into global batches
(the same for any number of processes), each process reads its shard of each global batch
(:meth:`cryograd.distributed.Communicator.shard`) from the memory-mapped stacks, and partial sums
are added across processes. Peak memory therefore grows with the box and the batch, not with the
number of particles.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cryograd.ctf import ctf_from_frequencies
from cryograd.fourier import frequency_grid_2d

__all__ = ["ParticleBatch", "load_batch", "global_batches", "ctf_half_grid", "expand_symmetry"]


@dataclass
class ParticleBatch:
    """One process's share of a global batch.

    Attributes
    ----------
    indices
        ``(b,)`` particle indices into the set.
    images
        ``(b, D, D)`` real images (compute dtype, device).
    rotations
        ``(b, 3, 3)`` RELION ``A``.
    shifts_px
        ``(b, 2)`` RELION origins in pixels, or None.
    ctf
        ``(b, D, D // 2 + 1)`` RELION-sign CTF on the half grid, or None (no CTF correction).
    premultiplied
        ``(b,)`` bool: the images already carry one CTF factor.
    """

    indices: np.ndarray
    images: torch.Tensor
    rotations: torch.Tensor
    shifts_px: torch.Tensor | None
    ctf: torch.Tensor | None
    premultiplied: torch.Tensor

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def model_filter(self) -> torch.Tensor | None:
        """The CTF factor of the image formation model: CTF, or CTF² for premultiplied images."""
        if self.ctf is None:
            return None
        if not bool(self.premultiplied.any()):
            return self.ctf
        pm = self.premultiplied.view(-1, 1, 1)
        return torch.where(pm, self.ctf * self.ctf, self.ctf)

    def data_filter(self) -> torch.Tensor | None:
        """The factor applied to the data's spectra before insertion: CTF, or 1 if premultiplied."""
        if self.ctf is None:
            return None
        if not bool(self.premultiplied.any()):
            return self.ctf
        pm = self.premultiplied.view(-1, 1, 1)
        return torch.where(pm, torch.ones_like(self.ctf), self.ctf)


def ctf_half_grid(
    params, box_size: int, pixel_sizes_angstrom: torch.Tensor, *, device, dtype
) -> torch.Tensor:
    """RELION's CTF of a batch on the ``(D, D // 2 + 1)`` half grid, one pixel size per particle.

    Particles are grouped by pixel size, so the frequency grid (and its azimuths) is computed once
    per group, not once per particle.

    Parameters
    ----------
    params
        :class:`cryograd.ctf.CTFParams` of ``b`` particles.
    box_size
        ``D``.
    pixel_sizes_angstrom
        ``(b,)`` pixel sizes in Å.

    Returns
    -------
    torch.Tensor
        ``(b, D, D // 2 + 1)``.
    """
    kx, ky = frequency_grid_2d(box_size, rfft=True, device=device, dtype=dtype)
    px = pixel_sizes_angstrom.detach().cpu().double()
    out = torch.empty((len(px), box_size, box_size // 2 + 1), device=device, dtype=dtype)
    for value in torch.unique(px):
        rows = torch.nonzero(px == value).squeeze(1)
        scale = 1.0 / (box_size * float(value))
        sub = params[rows.to(params.defocus_u_angstrom.device)]
        out[rows.to(device)] = ctf_from_frequencies(
            sub.to(device=device, dtype=dtype), kx * scale, ky * scale
        )
    return out


def load_batch(
    particles,
    indices: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    use_ctf: bool = True,
    with_images: bool = True,
) -> ParticleBatch:
    """Read particles ``indices`` of a :class:`cryograd.particles.ParticleSet`.

    Parameters
    ----------
    particles
        The set (with poses).
    indices
        ``(b,)`` indices.
    use_ctf
        Compute the CTFs (when the set has them); false gives ``ctf=None``.
    with_images
        Read the images (false: a ``(b, 0, 0)`` placeholder, for passes that need only poses).
    """
    indices = np.asarray(indices, dtype=np.int64)
    d = int(particles.box_size)
    if with_images:
        images = torch.from_numpy(np.ascontiguousarray(particles.images(indices)))
        images = images.to(device=device, dtype=dtype)
    else:
        images = torch.zeros((len(indices), 0, 0), device=device, dtype=dtype)
    rotations = torch.as_tensor(particles.rotations[indices], device=device, dtype=dtype)
    shifts = None
    if particles.shifts_px is not None:
        sh = particles.shifts_px[indices]
        if np.any(sh != 0):
            shifts = torch.as_tensor(sh, device=device, dtype=dtype)
    ctf = None
    if use_ctf and particles.has_ctf:
        params = particles.ctf_params(indices, device=device, dtype=torch.float64)
        px = torch.as_tensor(particles.pixel_sizes_angstrom[indices], dtype=torch.float64)
        ctf = ctf_half_grid(params, d, px, device=device, dtype=dtype)
    premultiplied = torch.as_tensor(
        np.asarray(particles.ctf_premultiplied)[indices].astype(bool), device=device
    )
    if not use_ctf:
        premultiplied = torch.zeros_like(premultiplied)
    return ParticleBatch(indices, images, rotations, shifts, ctf, premultiplied)


def global_batches(indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive global batches of ``indices`` (``batch_size`` each, the last may be shorter)."""
    indices = np.asarray(indices, dtype=np.int64)
    for start in range(0, len(indices), max(1, int(batch_size))):
        yield indices[start : start + batch_size]


def expand_symmetry(batch: ParticleBatch, sym_matrices: torch.Tensor | None) -> ParticleBatch:
    """Repeat every particle once per symmetry operator ``R`` with the pose ``A Rᵀ``.

    ``sym_matrices`` is ``(G, 3, 3)`` (:func:`cryograd.symmetry.symmetry_matrices`) or None. The
    images, shifts and CTFs are repeated (views where possible) in the order particle-major.
    """
    if sym_matrices is None or sym_matrices.shape[0] == 1:
        return batch
    g = sym_matrices.shape[0]
    mats = sym_matrices.to(device=batch.rotations.device, dtype=batch.rotations.dtype)
    rot = (batch.rotations[:, None] @ mats.transpose(-1, -2)[None]).reshape(-1, 3, 3)

    def rep(t):
        if t is None:
            return None
        return t.repeat_interleave(g, dim=0)

    return ParticleBatch(
        indices=np.repeat(batch.indices, g),
        images=rep(batch.images) if batch.images.numel() else batch.images,
        rotations=rot,
        shifts_px=rep(batch.shifts_px),
        ctf=rep(batch.ctf),
        premultiplied=rep(batch.premultiplied),
    )
