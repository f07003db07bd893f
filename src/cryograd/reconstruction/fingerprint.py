"""What a checkpoint belongs to: the particles and every setting that changes the result.

``cryograd reconstruct`` writes :data:`FINGERPRINT_FILE` into the output folder when a run starts
and, with ``--resume``, refuses to continue checkpoints made from other particles or settings
(:func:`check_fingerprint`): a resumed run must end with the map the uninterrupted run would give.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from cryograd.errors import CryogradError

__all__ = ["FINGERPRINT_FILE", "particle_fingerprint", "run_fingerprint", "check_fingerprint"]

FINGERPRINT_FILE = "checkpoint_run.json"

_NOT_RESULT = ("checkpoint_dir", "resume")


def particle_fingerprint(particles) -> dict[str, Any]:
    """File, count and a SHA-256 of poses, origins, CTFs, optics, half sets and image names.

    Image names enter as stack file *names* and indices, so that the same data moved to another
    folder (``--datadir``) still match.
    """
    h = hashlib.sha256()
    arrays = (
        particles.rotations,
        particles.shifts_px,
        particles.ctf,
        particles.half_set,
        particles.class_number,
        particles.optics_group,
        particles.stack_ids,
        particles.stack_indices,
        np.asarray(particles.pixel_sizes_angstrom),
    )
    for a in arrays:
        h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
    h.update("\n".join(Path(f).name for f in particles.stack_files).encode())
    path = getattr(particles, "path", None)
    return {
        "file": str(Path(path).resolve()) if path else None,
        "count": len(particles),
        "sha256": h.hexdigest(),
    }


def run_fingerprint(particles, config, options: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of a run: :func:`particle_fingerprint` and the settings.

    Parameters
    ----------
    particles
        :class:`cryograd.particle_set.ParticleSet`.
    config
        The method's :class:`~cryograd.solvers.config.SolverConfig`.
    options
        Other settings that change the result (selection, symmetry, CTF use, precision, ...).
    """
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_RESULT}
    settings.update(options)
    settings = json.loads(json.dumps(settings, default=str))
    return {"particles": particle_fingerprint(particles), "settings": settings}


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Refuse to resume when ``current`` differs from the checkpoint's ``saved`` fingerprint.

    Raises
    ------
    CryogradError
        One line naming the first setting or particle property that differs.
    """
    old_p, new_p = saved.get("particles", {}), current["particles"]
    for key, what in (("count", "particle count"), ("sha256", "poses/CTF/image names")):
        if old_p.get(key) != new_p.get(key):
            raise CryogradError(
                f"{where}: --resume: the particles differ from the checkpoint's ({what}: "
                f"{old_p.get(key)} in the checkpoint of {old_p.get('file')}, {new_p.get(key)} "
                f"now); use --force to start again"
            )
    old_s, new_s = saved.get("settings", {}), current["settings"]
    for key in sorted(set(old_s) | set(new_s)):
        if old_s.get(key) != new_s.get(key):
            raise CryogradError(
                f"{where}: --resume: {key}={new_s.get(key)!r} given, but the checkpoint was "
                f"made with {key}={old_s.get(key)!r}; use the same settings, or --force to start "
                "again"
            )
