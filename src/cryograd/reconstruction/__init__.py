"""Gold-standard reconstruction: particles in, half maps, FSC and a weighted map out.

- :mod:`~cryograd.reconstruction.run`: :func:`reconstruct`, the driver.
- :mod:`~cryograd.reconstruction.options`: keyword options -> the method's config and context.
- :mod:`~cryograd.reconstruction.selection`: which particles, and their half sets.
- :mod:`~cryograd.reconstruction.masks`: the mask of the masked FSC.
- :mod:`~cryograd.reconstruction.memory`: the memory a run needs.
- :mod:`~cryograd.reconstruction.resolution`: FSC, its ``maxres`` limit, the weighted map.
- :mod:`~cryograd.reconstruction.result`: :class:`Result`, ``run.json`` and the output names.

The methods themselves are the solvers of :data:`cryograd.solvers.SOLVERS`.
"""

from cryograd.reconstruction.memory import check_memory, estimate_memory_bytes
from cryograd.reconstruction.result import OUTPUT_FILES, Result
from cryograd.reconstruction.run import reconstruct
from cryograd.reconstruction.selection import select_particles
from cryograd.solvers import SOLVERS

METHODS = tuple(SOLVERS)
"""The method names, in the order registered."""

__all__ = [
    "METHODS",
    "OUTPUT_FILES",
    "Result",
    "check_memory",
    "estimate_memory_bytes",
    "reconstruct",
    "select_particles",
]
