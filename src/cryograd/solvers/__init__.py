"""Solvers: from particles with poses to a map.

- :mod:`~cryograd.solvers.direct`: CTF-weighted Fourier insertion and Wiener division (RELION's
  ``relion_reconstruct --ctf``), with a constant SNR, an operator ``λ`` or RELION's ``τ²``.
- :mod:`~cryograd.solvers.cg`: conjugate gradients on ``(AᵀA + λI) x = Aᵀb``, with a Toeplitz
  ``AᵀA`` for the Fourier projector (one pass over the data) or the projector pair per iteration.
- :mod:`~cryograd.solvers.gradient`: minibatch Adam / SGD with validation, early stopping and
  checkpoints.
- :mod:`~cryograd.solvers.losses` (``l2``, ``l1``, ``huber``, ``sorted-l1``) and
  :mod:`~cryograd.solvers.penalties` (``none``, ``l2``, ``l1``, ``sorted-l1`` = SLOPE, ``tv``).
- :mod:`~cryograd.solvers.batches`: how every solver streams particles (global batches, each
  process's shard, CTFs on the half grid, symmetry expansion).

Every solver takes a ``comm`` (:class:`cryograd.distributed.Communicator`, default one process):
partial sums go through ``comm.all_reduce_sum_`` and each process reads ``comm.shard`` of every
global batch, so the result does not depend on the number of processes.
"""

from cryograd.solvers.cg import CGResult, conjugate_gradient, solve_cg
from cryograd.solvers.direct import FourierInsertion, insert_particles, reconstruct_direct
from cryograd.solvers.gradient import TrainResult, train
from cryograd.solvers.losses import LOSSES, make_loss
from cryograd.solvers.penalties import PENALTIES, make_penalty, prox_sorted_l1

__all__ = [
    "CGResult",
    "FourierInsertion",
    "LOSSES",
    "PENALTIES",
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
