"""Small simulated data sets for the reconstruction tests (in memory, or on disk via simulate)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from cryograd.ctf import CTFParams
from cryograd.data import demo_map_path
from cryograd.forward import ForwardModel
from cryograd.io.mrc import read_map
from cryograd.particles import ParticleSet
from cryograd.simulation import random_rotations


@functools.lru_cache(maxsize=4)
def small_map(box: int = 32) -> tuple[np.ndarray, float]:
    """The built-in 64³ map Fourier-cropped to ``box`` (float64) and its voxel size in Å."""
    m = read_map(demo_map_path())
    n = m.data.shape[0]
    return fourier_crop(m.data, box), m.voxel_size_angstrom * n / box


def make_particles(
    volume: np.ndarray,
    n: int,
    pixel_size: float,
    *,
    snr: float | None = 0.5,
    ctf: bool = True,
    shifts: bool = True,
    seed: int = 0,
    rotations: np.ndarray | None = None,
) -> tuple[ParticleSet, float]:
    """Simulated particles held in memory: uniform poses, RELION CTFs, shifts, white noise.

    Returns the set and the noise standard deviation (0 without noise). ``snr`` is the variance
    of the clean images over the noise variance.
    """
    rng = np.random.default_rng(seed)
    box = volume.shape[0]
    rot = random_rotations(n, rng) if rotations is None else rotations
    sh = rng.uniform(-2, 2, size=(n, 2)) if shifts else None
    params = None
    if ctf:
        du = rng.uniform(1.0e4, 2.5e4, n)
        params = CTFParams.create(
            du, du - rng.uniform(0, 500, n), rng.uniform(0, 180, n), 300.0, 2.7, 0.1
        )
    model = ForwardModel(box, pixel_size)
    clean = model.project(
        torch.from_numpy(volume),
        torch.from_numpy(rot),
        None if sh is None else torch.from_numpy(sh),
        params,
    ).numpy()
    sigma = 0.0
    images = clean
    if snr is not None:
        sigma = float(np.sqrt(clean.var() / snr))
        images = clean + rng.normal(0, sigma, clean.shape)
    ps = ParticleSet.from_arrays(
        rotations=rot,
        shifts_px=sh,
        ctf=params,
        pixel_size_angstrom=pixel_size,
        box_size=box,
        images=images.astype(np.float32),
    )
    return ps, sigma


def pseudo_atom_map(box: int, *, sym: str | None = None, seed: int = 1) -> np.ndarray:
    """A full-band truth that is zero outside the particle: Gaussian "atoms" (σ 0.7 px, so their
    spectrum reaches Nyquist) drawn inside a sphere of radius 0.3 D, with the copies of a point
    group when ``sym`` is given. Float64 ``(D, D, D)``."""
    from cryograd.symmetry import symmetry_matrices

    rng = np.random.default_rng(seed)
    radius = 0.3 * box
    pts = rng.uniform(-radius, radius, size=(box * 24, 3))
    pts = pts[np.linalg.norm(pts, axis=1) < radius][: box * 8]
    if sym is not None and sym.upper() != "C1":
        mats = symmetry_matrices(sym, dtype=torch.float64).numpy()
        pts = np.concatenate([pts @ m.T for m in mats])
    c = torch.arange(box, dtype=torch.float64) - box // 2
    grid = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1)  # (z, y, x, 3) as z, y, x
    vol = torch.zeros((box,) * 3, dtype=torch.float64)
    for p in torch.from_numpy(pts[:, ::-1].copy()):  # (x, y, z) -> (z, y, x)
        vol += torch.exp(-((grid - p) ** 2).sum(-1) / (2 * 0.7**2))
    return vol.numpy()


def fourier_crop(volume: np.ndarray, box: int) -> np.ndarray:
    """``volume`` Fourier-cropped to ``box`` (densities keep their values)."""
    vol = torch.from_numpy(np.asarray(volume, dtype=np.float64))
    n = vol.shape[0]
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol)))
    c, h = n // 2, box // 2
    spec = spec[c - h : c - h + box, c - h : c - h + box, c - h : c - h + box]
    small = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spec))).real * (box / n) ** 3
    return small.numpy()


def simulate_in_memory(
    volume: np.ndarray,
    n: int,
    pixel_size: float,
    *,
    snr: float,
    seed: int = 0,
    projector: str = "real",
    defocus_um: tuple[float, float] = (0.8, 3.0),
) -> ParticleSet:
    """Particles of ``volume`` held in memory, projected by another projector than the one that
    reconstructs (by default the real-space voxel-driven one, whose images keep the volume's sum
    exactly): uniform poses, shifts within ±2 px, RELION CTFs (defocus in ``defocus_um``, 300 kV,
    Cs 2.7 mm, amplitude contrast 0.1) and white noise of variance ``var(clean) / snr``."""
    rng = np.random.default_rng(seed)
    box = volume.shape[0]
    rot = random_rotations(n, rng)
    sh = rng.uniform(-2, 2, size=(n, 2))
    du = rng.uniform(defocus_um[0] * 1e4, defocus_um[1] * 1e4, n)
    params = CTFParams.create(
        du, du - rng.uniform(0, 500, n), rng.uniform(0, 180, n), 300.0, 2.7, 0.1
    )
    model = ForwardModel(box, pixel_size, projector=projector)
    clean = model.project(
        torch.from_numpy(np.asarray(volume, dtype=np.float64)),
        torch.from_numpy(rot),
        torch.from_numpy(sh),
        params,
    ).numpy()
    sigma = float(np.sqrt(clean.var() / snr))
    images = clean + rng.normal(0, sigma, clean.shape)
    return ParticleSet.from_arrays(
        rotations=rot,
        shifts_px=sh,
        ctf=params,
        pixel_size_angstrom=pixel_size,
        box_size=box,
        images=images.astype(np.float32),
    )


def soft_sphere(box: int, radius: float, edge: float = 3.0) -> torch.Tensor:
    """``(D, D, D)`` raised-cosine sphere about voxel ``D // 2``: 1 within ``radius``, 0 beyond
    ``radius + edge``."""
    c = torch.arange(box, dtype=torch.float64) - box // 2
    r = torch.sqrt(c.view(-1, 1, 1) ** 2 + c.view(1, -1, 1) ** 2 + c.view(1, 1, -1) ** 2)
    t = ((radius + edge - r) / edge).clamp(0.0, 1.0)
    return 0.5 - 0.5 * torch.cos(np.pi * t)


def images_sum(particles) -> float:
    """The volume's sum that the images carry, computed from the images alone: each image's pixel
    sum is the projected volume's sum times ``CTF(0) = sin(asin(Q0))·scale = Q0`` (no phase
    shift), so the CTF-weighted average is ``Σ_i Q0_i S_i / Σ_i Q0_i²``. (The pad-2 Fourier
    simulator's images carry ``Σ G·x``, a few per cent above ``Σ x``: its gridding pre-correction
    ``G`` is exact at every frequency but the origin.)"""
    images = particles.images(np.arange(len(particles))).astype(np.float64)
    sums = images.reshape(len(particles), -1).sum(axis=1)
    if particles.ctf is None:
        return float(sums.mean())
    q0 = particles.ctf_params(dtype=torch.float64).amplitude_contrast.numpy()
    return float((q0 * sums).sum() / (q0 * q0).sum())
