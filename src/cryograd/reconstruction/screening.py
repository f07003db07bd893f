"""The input checks of a reconstruction (:mod:`cryograd.checks`), shared across processes.

:func:`screen_particles` runs the metadata checks, scans the images once (each process its shard;
the statistics are summed across processes so that every rank keeps the same particles) and
returns the particles to use.
"""

from __future__ import annotations

import numpy as np
import torch

from cryograd.checks import ImageStats, check_metadata, image_stats, scan_images

__all__ = ["screen_particles"]


def _gathered_stats(particles, indices: np.ndarray, comm) -> ImageStats:
    """:func:`cryograd.checks.image_stats` of ``indices``, each process reading its shard."""
    if comm is None or not comm.is_distributed:
        return image_stats(particles, indices)
    local = comm.shard(np.arange(len(indices)))
    part = image_stats(particles, indices[local])
    table = torch.zeros((3, len(indices)), dtype=torch.float64)
    table[0, local] = torch.from_numpy((~part.finite).astype(np.float64))
    table[1, local] = torch.from_numpy(np.where(part.finite, part.max_abs, 0.0))
    table[2, local] = torch.from_numpy(part.std)
    comm.all_reduce_sum_(table)
    finite = table[0].numpy() == 0
    return ImageStats(indices, finite, np.where(finite, table[1].numpy(), np.inf), table[2].numpy())


def screen_particles(
    particles, indices: np.ndarray, *, use_ctf: bool, skip_bad: bool = False, comm=None
) -> np.ndarray:
    """Check metadata and images of ``indices``; return the indices to reconstruct from.

    Parameters
    ----------
    particles
        :class:`cryograd.particle_set.ParticleSet`.
    indices
        ``(n,)`` selected particles.
    use_ctf
        Whether the CTF parameters will be used (then they are checked).
    skip_bad
        Leave out particles with bad images instead of refusing them.
    comm
        The job's :class:`~cryograd.distributed.Communicator` (None: one process).

    Raises
    ------
    CryogradError
        See :func:`cryograd.checks.check_metadata` and :func:`cryograd.checks.scan_images`.
    """
    idx = np.asarray(indices, dtype=np.int64)
    check_metadata(particles, idx, use_ctf=use_ctf)
    stats = _gathered_stats(particles, idx, comm)
    return scan_images(particles, idx, skip_bad=skip_bad, stats=stats)
