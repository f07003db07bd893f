"""Solvers: from particles with poses to a map.

- :mod:`~cryograd.solvers.insertion`: the Fourier insertion sums every Fourier-domain solver
  starts from (numerator ``Σ c · FFT(b)`` and weights ``Σ c²`` on the padded grid).
- :mod:`~cryograd.solvers.direct`: Wiener division of the insertion (RELION's
  ``relion_reconstruct --ctf``), with a constant SNR, an operator ``λ`` or RELION's ``τ²``.
- :mod:`~cryograd.solvers.normal`: the normal operators ``AᵀA`` (Toeplitz from the insertion
  weights, or the projector pair) and ``Aᵀb``.
- :mod:`~cryograd.solvers.krylov`: preconditioned conjugate gradients (and the in-box refinement
  of a direct map); :mod:`~cryograd.solvers.cg`: the ``cg`` method on ``(AᵀA + λI) x = Aᵀb``.
- :mod:`~cryograd.solvers.gradient`: minibatch training with validation, early stopping and
  checkpoints; :mod:`~cryograd.solvers.minibatch` runs it per half set (``adam``, ``sgd``).
- :mod:`~cryograd.solvers.losses` (``LOSSES``), :mod:`~cryograd.solvers.penalties`
  (``PENALTIES``) and :mod:`~cryograd.solvers.optimizers` (``OPTIMIZERS``): registries by name.
- :mod:`~cryograd.solvers.batches`: how every solver streams particles (global batches, each
  process's shard, CTFs on the half grid, symmetry expansion).
- :mod:`~cryograd.solvers.context` (``RunContext``), :mod:`~cryograd.solvers.config` (one
  validated config per method) and :mod:`~cryograd.solvers.registry` (``SOLVERS``: each method's
  ``solve_halves``).

Every solver takes a ``comm`` (:class:`cryograd.distributed.Communicator`, default one process):
partial sums go through ``comm.all_reduce_sum_`` and each process reads ``comm.shard`` of every
global batch, so the result does not depend on the number of processes.
"""

# the solver modules register their methods (SOLVERS) in this order: direct, cg, adam, sgd
from cryograd.solvers.direct import reconstruct_direct  # isort: skip
from cryograd.solvers.cg import solve_cg  # isort: skip
from cryograd.solvers import minibatch as _minibatch  # noqa: F401, I001  (adam, sgd)
from cryograd.solvers.config import CGConfig, DirectConfig, GradientConfig, SolverConfig
from cryograd.solvers.context import RunContext
from cryograd.solvers.gradient import TrainConfig, TrainResult, train
from cryograd.solvers.insertion import FourierInsertion, insert_particles
from cryograd.solvers.krylov import CGResult, conjugate_gradient
from cryograd.solvers.losses import LOSSES, make_loss
from cryograd.solvers.optimizers import OPTIMIZERS
from cryograd.solvers.penalties import PENALTIES, make_penalty, prox_sorted_l1
from cryograd.solvers.registry import SOLVERS, HalfMaps

__all__ = [
    "CGConfig",
    "CGResult",
    "DirectConfig",
    "FourierInsertion",
    "GradientConfig",
    "HalfMaps",
    "LOSSES",
    "OPTIMIZERS",
    "PENALTIES",
    "RunContext",
    "SOLVERS",
    "SolverConfig",
    "TrainConfig",
    "TrainResult",
    "conjugate_gradient",
    "insert_particles",
    "make_loss",
    "make_penalty",
    "prox_sorted_l1",
    "reconstruct_direct",
    "solve_cg",
    "train",
]
