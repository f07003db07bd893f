"""Particles: the :class:`ParticleSet` type and :func:`read_particles`, in one place.

The set itself is defined in :mod:`cryograd.particle_set` (which imports no reader) and files are
read through the format registry :mod:`cryograd.io.registry` (whose readers build sets); this
module only gathers the two for users, so that ``from cryograd.particles import ParticleSet,
read_particles`` works without any import circle: nothing under ``cryograd.io`` imports it.
"""

from __future__ import annotations

from cryograd.io.registry import read_particles
from cryograd.particle_set import (
    CTF_COLUMNS,
    OpticsGroup,
    ParticleSet,
    parse_image_names,
    resolve_image_path,
)

__all__ = [
    "CTF_COLUMNS",
    "OpticsGroup",
    "ParticleSet",
    "parse_image_names",
    "read_particles",
    "resolve_image_path",
]
