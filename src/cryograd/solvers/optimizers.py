"""The optimisers of the minibatch solvers, by name (``--method adam`` / ``--method sgd``).

To add one, add its ``torch.optim`` class here: the ``--method`` choices and the configs follow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["OPTIMIZERS"]

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}
"""Name -> optimiser class, called as ``cls([volume], lr=lr)``."""
