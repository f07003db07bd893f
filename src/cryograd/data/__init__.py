"""Data shipped with cryograd: the demo map (see ``PROVENANCE.md`` in this folder).

``emd_5168_64.mrc``: EMDB EMD-5168 (F-actin, Fujii et al. 2010, CC0), Fourier-cropped to 64³ at
2.721875 Å/voxel, solvent level subtracted, soft spherical mask (radius 22 px, 6 px cosine edge).
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

__all__ = ["DEMO_MAP_NAME", "DEMO_MAP_VOXEL_SIZE_ANGSTROM", "demo_map_path"]

DEMO_MAP_NAME = "emd_5168_64.mrc"
DEMO_MAP_VOXEL_SIZE_ANGSTROM = 2.721875

_stack = contextlib.ExitStack()
atexit.register(_stack.close)


def demo_map_path() -> Path:
    """Filesystem path of the built-in demo map ``emd_5168_64.mrc`` (64³, 2.721875 Å/voxel).

    Uses :mod:`importlib.resources`, so it also works from a zipped installation (the file is then
    extracted to a temporary file that lives until the interpreter exits).
    """
    resource = resources.files(__name__) / DEMO_MAP_NAME
    if isinstance(resource, Path):
        return resource
    return Path(_stack.enter_context(resources.as_file(resource)))
