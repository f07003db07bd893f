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

from cryograd.ctf import CTFParams, ctf_from_frequencies
from cryograd.fourier import frequency_grid_2d
from cryograd.optics.particles import ParticleOptics

__all__ = [
    "ParticleBatch",
    "load_batch",
    "global_batches",
    "ctf_half_grid",
    "expand_symmetry",
    "DeviceParticleCache",
    "batch_loader",
    "should_cache",
    "cache_bytes",
]


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
    ctf_params
        :class:`cryograd.ctf.CTFParams` of the ``b`` particles (float64, on the device) when the
        batch was loaded with ``ctf_values=False`` (for kernels that compute the CTF themselves),
        else None.
    pixel_sizes_angstrom
        ``(b,)`` float64 pixel sizes in Å, alongside ``ctf_params``.
    optics
        RELION's observation model of the ``b`` particles
        (:meth:`cryograd.particle_set.ParticleSet.particle_optics`; ``ctf`` values include it),
        or None when it changes nothing. Pass it on to the forward model and the insertion.
    """

    indices: np.ndarray
    images: torch.Tensor
    rotations: torch.Tensor
    shifts_px: torch.Tensor | None
    ctf: torch.Tensor | None
    premultiplied: torch.Tensor
    ctf_params: CTFParams | None = None
    pixel_sizes_angstrom: torch.Tensor | None = None
    optics: ParticleOptics | None = None

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
    ctf_values: bool = True,
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
    ctf_values
        Compute the ``(b, D, D // 2 + 1)`` CTF values (``ctf``); false leaves ``ctf`` None and
        gives the parameters instead (``ctf_params``, ``pixel_sizes_angstrom``), so that a kernel
        computes the CTF on the fly and no ``b × D²`` CTF array is held.
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
    ctf = params = px = None
    optics = particles.particle_optics(indices, device=device)
    if use_ctf and particles.has_ctf:
        params = particles.ctf_params(indices, device=device, dtype=torch.float64)
        px = torch.as_tensor(particles.pixel_sizes_angstrom[indices], dtype=torch.float64)
        if ctf_values and optics is not None:
            ctf = optics.ctf_values(params, d, device=device, dtype=dtype)
            params = px = None
        elif ctf_values:
            ctf = ctf_half_grid(params, d, px, device=device, dtype=dtype)
            params = px = None
        else:
            px = px.to(device)
    premultiplied = torch.as_tensor(
        np.asarray(particles.ctf_premultiplied)[indices].astype(bool), device=device
    )
    if not use_ctf:
        premultiplied = torch.zeros_like(premultiplied)
    return ParticleBatch(indices, images, rotations, shifts, ctf, premultiplied, params, px, optics)


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
        ctf_params=(
            None
            if batch.ctf_params is None
            else batch.ctf_params[
                torch.arange(
                    len(batch), device=batch.ctf_params.defocus_u_angstrom.device
                ).repeat_interleave(g)
            ]
        ),
        pixel_sizes_angstrom=rep(batch.pixel_sizes_angstrom),
        optics=None if batch.optics is None else batch.optics.repeat_interleave(g),
    )


#: Fraction of the free device memory the particle cache may take.
CACHE_MEMORY_FRACTION = 0.4


def cache_bytes(
    n_particles: int, box_size: int, dtype: torch.dtype, *, with_images=True, with_ctf=True
) -> int:
    """Bytes :class:`DeviceParticleCache` needs for ``n`` particles (images, CTFs, poses)."""
    real = torch.finfo(dtype).bits // 8
    d = int(box_size)
    per = 9 * real + 2 * real + 1
    if with_images:
        per += d * d * real
    if with_ctf:
        per += d * (d // 2 + 1) * real
    return int(n_particles) * per


def should_cache(
    n_particles: int,
    box_size: int,
    device,
    dtype: torch.dtype,
    *,
    with_images: bool = True,
    with_ctf: bool = True,
    cache: bool | None = None,
) -> bool:
    """Whether to keep the particles on the device: ``cache`` if given, else on a CUDA device
    when they take less than :data:`CACHE_MEMORY_FRACTION` of its free memory (never on the CPU,
    where the memory-mapped stacks are streamed)."""
    if cache is not None:
        return bool(cache)
    device = torch.device(device)
    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    need = cache_bytes(n_particles, box_size, dtype, with_images=with_images, with_ctf=with_ctf)
    return need < CACHE_MEMORY_FRACTION * free


class DeviceParticleCache:
    """Particles ``indices`` read once and held on the compute device.

    Iterative methods visit every particle in every epoch (or CG iteration); when the set fits
    in the device's memory (:func:`should_cache`) reading it once from the memory-mapped stacks
    and computing its CTFs once makes an epoch cost about one projection plus one
    back-projection. :meth:`batch` returns the same :class:`ParticleBatch` as :func:`load_batch`.

    Parameters
    ----------
    particles, indices
        The set and the (global) indices this process will ask for.
    device, dtype, use_ctf, with_images
        As for :func:`load_batch`.
    batch_size
        Particles read per step while filling the cache.
    """

    def __init__(
        self,
        particles,
        indices: np.ndarray,
        *,
        device,
        dtype,
        use_ctf: bool = True,
        with_images: bool = True,
        batch_size: int = 1024,
    ) -> None:
        self.indices = np.unique(np.asarray(indices, dtype=np.int64))
        self.with_images = with_images
        parts = [
            load_batch(
                particles,
                self.indices[s : s + batch_size],
                device=device,
                dtype=dtype,
                use_ctf=use_ctf,
                with_images=with_images,
            )
            for s in range(0, len(self.indices), max(1, int(batch_size)))
        ]

        def cat(name):
            values = [getattr(p, name) for p in parts]
            if not values or values[0] is None:
                return None
            return torch.cat(values)

        self.images = cat("images") if with_images else None
        self.rotations = cat("rotations")
        self.shifts_px = None
        if any(p.shifts_px is not None for p in parts):
            self.shifts_px = torch.cat(
                [
                    p.shifts_px if p.shifts_px is not None else p.rotations.new_zeros((len(p), 2))
                    for p in parts
                ]
            )
        self.ctf = cat("ctf")
        self.premultiplied = cat("premultiplied")
        self.optics = particles.particle_optics(self.indices, device=device)
        self.device = torch.device(device)
        self.dtype = dtype

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def batch(self, indices: np.ndarray) -> ParticleBatch:
        """The particles ``indices`` (each must be one of the cached ones)."""
        indices = np.asarray(indices, dtype=np.int64)
        rows_np = np.searchsorted(self.indices, indices)
        if np.any(rows_np >= len(self.indices)) or np.any(self.indices[rows_np] != indices):
            raise KeyError("particles outside the cache were asked for")
        rows = torch.as_tensor(rows_np, device=self.device)
        if self.images is not None:
            images = self.images.index_select(0, rows)
        else:
            images = self.rotations.new_zeros((len(indices), 0, 0))
        shifts = None if self.shifts_px is None else self.shifts_px.index_select(0, rows)
        ctf = None if self.ctf is None else self.ctf.index_select(0, rows)
        return ParticleBatch(
            indices,
            images,
            self.rotations.index_select(0, rows),
            shifts,
            ctf,
            self.premultiplied.index_select(0, rows),
            optics=None if self.optics is None else self.optics.chunk(rows),
        )


def batch_loader(
    particles,
    indices: np.ndarray,
    *,
    device,
    dtype,
    use_ctf: bool = True,
    with_images: bool = True,
    cache: bool | None = None,
):
    """A function ``local_indices -> ParticleBatch``: from a :class:`DeviceParticleCache` of
    this process's share of ``indices`` when :func:`should_cache` says so, else
    :func:`load_batch` (streamed from the stacks)."""
    # a process's shard of each (reshuffled) global batch is not known in advance, so every
    # process caches the whole list (on its own device)
    mine = np.asarray(indices, dtype=np.int64)
    with_ctf = use_ctf and bool(particles.has_ctf)
    box = int(particles.box_size)
    if should_cache(
        len(mine), box, device, dtype, with_images=with_images, with_ctf=with_ctf, cache=cache
    ):
        store = DeviceParticleCache(
            particles, mine, device=device, dtype=dtype, use_ctf=use_ctf, with_images=with_images
        )
        return store.batch

    def load(local):
        return load_batch(
            particles, local, device=device, dtype=dtype, use_ctf=use_ctf, with_images=with_images
        )

    return load
