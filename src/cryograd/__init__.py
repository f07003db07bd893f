"""cryograd: single-particle cryo-EM 3D reconstruction with matched projectors.

The data path, from files to a map: ``read_particles`` (RELION STAR, cryoSPARC .cs) gives a
``ParticleSet``; ``ForwardModel`` holds the image formation model ``b = T C P x`` and its exact
adjoint; ``reconstruct`` turns particles into a map with half maps and FSC.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from cryograd.errors import CryogradError  # noqa: E402

# Public names and the module that defines each; imported on first use to keep start-up fast.
_LAZY = {
    "read_particles": "cryograd.io.registry",
    "ParticleSet": "cryograd.particle_set",
    "write_star": "cryograd.io.star",
    "read_map": "cryograd.io.mrc",
    "write_map": "cryograd.io.mrc",
    "CTFParams": "cryograd.ctf",
    "ctf_2d": "cryograd.ctf",
    "euler_to_matrix": "cryograd.geometry",
    "matrix_to_euler": "cryograd.geometry",
    "ForwardModel": "cryograd.forward",
    "simulate": "cryograd.simulation",
    "reconstruct": "cryograd.reconstruction",
    "fsc": "cryograd.validation",
}

__all__ = ["CryogradError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cryograd' has no attribute {name!r}")
