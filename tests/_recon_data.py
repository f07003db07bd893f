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
    vol = torch.from_numpy(m.data).double()
    n = vol.shape[0]
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol)))
    c, h = n // 2, box // 2
    spec = spec[c - h : c - h + box, c - h : c - h + box, c - h : c - h + box]
    small = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spec))).real * (box / n) ** 3
    return small.numpy(), m.voxel_size_angstrom * n / box


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
