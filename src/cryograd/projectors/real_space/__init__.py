"""Voxel-driven real-space projector and its exact transpose.

- :mod:`.geometry`: where every voxel lands on the images (the maths; read its docstring).
- :mod:`.projector`: :class:`RealSpaceProjector`, :func:`project`, :func:`backproject`.
- Backends side by side: ``_torch.py`` (reference), ``_triton.py`` (kernels, imported only when
  chosen). There are no compiled CPU loops for this projector.
"""

from cryograd.projectors.real_space._torch import backproject_geometry, project_geometry
from cryograd.projectors.real_space.geometry import (
    RealSpaceGeometry,
    default_batch_size,
    real_space_geometry,
)
from cryograd.projectors.real_space.projector import RealSpaceProjector, backproject, project

__all__ = [
    "RealSpaceProjector",
    "RealSpaceGeometry",
    "real_space_geometry",
    "project_geometry",
    "backproject_geometry",
    "project",
    "backproject",
    "default_batch_size",
]
