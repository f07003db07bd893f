"""Which particles a reconstruction uses, and how they split into gold-standard half sets."""

from __future__ import annotations

import logging

import numpy as np

from cryograd.errors import CryogradError
from cryograd.validation import split_halves

__all__ = ["select_particles", "split_into_halves"]

logger = logging.getLogger(__name__)


def select_particles(
    particles, *, first: int | None = None, class_number: int | None = None, use_ctf: bool = True
) -> np.ndarray:
    """Indices of the particles to use, after checking poses, CTFs and images.

    Parameters
    ----------
    particles
        :class:`cryograd.particles.ParticleSet`.
    first
        Use the first ``first`` particles (after the class selection), at least 2.
    class_number
        Use the particles of this ``rlnClassNumber``.
    use_ctf
        Whether the reconstruction corrects for the CTF (then the particles need CTFs).

    Returns
    -------
    np.ndarray
        ``(n,)`` int64 indices.

    Raises
    ------
    CryogradError
        No poses (naming the missing columns), no CTF with ``use_ctf``, no image, no particle left
        after ``class_number`` / ``first``.
    """
    src = particles.path or "particles"
    if particles.rotations is None:
        raise CryogradError(
            f"{src}: particles have no poses (missing columns rlnAngleRot, rlnAngleTilt, "
            "rlnAnglePsi, or alignments3D/pose in a .cs file); reconstruction needs them"
        )
    if use_ctf and not particles.has_ctf:
        raise CryogradError(
            f"{src}: particles have no CTF parameters (rlnDefocusU, rlnDefocusV, rlnDefocusAngle, "
            "rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast); use use_ctf=False to "
            "reconstruct without CTF correction"
        )
    if particles.box_size is None:
        raise CryogradError(f"{src}: the box size is unknown (no rlnImageSize and no images)")
    idx = np.arange(len(particles))
    if class_number is not None:
        if particles.class_number is None:
            raise CryogradError(
                f"{src}: class_number={class_number} given but there is no rlnClassNumber column"
            )
        idx = idx[particles.class_number[idx] == int(class_number)]
        if len(idx) == 0:
            raise CryogradError(f"{src}: no particle has rlnClassNumber {class_number}")
    if first is not None:
        if first < 2:
            raise CryogradError(f"first must be at least 2, got {first}")
        idx = idx[: int(first)]
    if len(idx) < 2:
        raise CryogradError(f"{src}: need at least 2 particles, found {len(idx)}")
    return idx


def split_into_halves(
    particles, indices: np.ndarray, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
    """The two half sets of ``indices``: by ``rlnRandomSubset`` when the file has it (and it
    puts particles in both halves), else a random split seeded with ``seed``.

    Returns
    -------
    halves
        ``(half1, half2)`` global particle indices.
    from_file
        Whether the split is the file's ``rlnRandomSubset``.
    """
    half_set = particles.half_set[indices] if particles.half_set is not None else None
    if half_set is not None and np.unique(half_set).size == 1:
        logger.warning(
            "%s: rlnRandomSubset puts all %d selected particles in half %s; using a seeded "
            "random split (seed %d) instead",
            getattr(particles, "path", "particles"),
            len(indices),
            half_set[0],
            seed,
        )
        half_set = None
    h1_local, h2_local = split_halves(len(indices), seed, half_set)
    return (indices[h1_local], indices[h2_local]), half_set is not None
