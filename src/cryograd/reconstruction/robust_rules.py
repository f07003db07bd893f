"""Robust rules: per-particle weights in ``[0, 1]`` from standardised per-particle losses.

Each rule maps the losses ``u_i ≥ 0`` of
:func:`~cryograd.reconstruction.robust_scores.standardized_losses` (in units of the good
particles' spread, so that thresholds are in standard deviations) to IRLS weights, the weights of
the weighted least-squares problem whose fixed point is the robust M-estimate. Measured on box 32
and 64 sets with 25 % mixed junk, ``student-t`` gave the best maps (it removes hard junk and
down-weights the borderline particles gradually), hence the default:

``trim``
    ``w = 1`` for ``u ≤ c`` (``c = 3``), else 0: least trimmed squares, hard rejection.
``huber``
    ``w = min(1, c / u)`` (``c = 2``): Huber's ψ, never zero.
``student-t``
    ``w = min(1, (ν + 1) / (ν + u²))`` (``ν = 4``): the t likelihood's weights, redescending.
``sorted-l1``
    The SLOPE / sorted-ℓ1 penalty at the level where junk lives: each particle gets an outlier
    term ``γ_i`` (``u_i = r_i + γ_i``) penalised by ``Σ_j λ_j |γ|_(j)`` with the
    Benjamini–Hochberg sequence ``λ_j = Φ⁻¹(1 − q j / 2n)`` (``q = 0.1``); ``γ`` is the prox of
    that penalty at ``u`` and the weight ``(u − γ) / u`` (Huber with thresholds that grow with the
    number of outliers, as BH's do with the number of discoveries).
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.solvers.penalties import prox_sorted_l1

__all__ = ["ROBUST_RULES", "DEFAULT_RULE", "robust_weights"]

TRIM_C = 2.5
HUBER_C = 2.0
STUDENT_NU = 4.0
SLOPE_Q = 0.1


def _trim(u: np.ndarray) -> np.ndarray:
    return (u <= TRIM_C).astype(np.float64)


def _huber(u: np.ndarray) -> np.ndarray:
    return np.minimum(1.0, HUBER_C / np.maximum(u, 1e-12))


def _student(u: np.ndarray) -> np.ndarray:
    return np.minimum(1.0, (STUDENT_NU + 1.0) / (STUDENT_NU + u * u))


def bh_sequence(n: int, q: float = SLOPE_Q) -> np.ndarray:
    """``λ_j = Φ⁻¹(1 − q j / 2n)``, ``j = 1 .. n`` (non-increasing)."""
    inv = NormalDist().inv_cdf
    j = np.arange(1, n + 1)
    return np.array([inv(1.0 - q * k / (2.0 * n)) for k in j])


def _sorted_l1(u: np.ndarray) -> np.ndarray:
    lam = torch.from_numpy(bh_sequence(len(u)))
    gamma = prox_sorted_l1(torch.from_numpy(np.asarray(u, dtype=np.float64)), lam).numpy()
    return np.where(u > 0, (u - gamma) / np.maximum(u, 1e-12), 1.0)


ROBUST_RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "trim": _trim,
    "huber": _huber,
    "student-t": _student,
    "sorted-l1": _sorted_l1,
}
"""Rule name -> ``u -> w`` (the ``--robust-rule`` choices)."""

DEFAULT_RULE = "student-t"


def robust_weights(losses: np.ndarray, rule: str = DEFAULT_RULE) -> np.ndarray:
    """Weights in ``[0, 1]`` of standardised losses ``(n,)`` by ``rule``."""
    if rule not in ROBUST_RULES:
        raise CryogradError(f"robust_rule must be one of {', '.join(ROBUST_RULES)}, got {rule!r}")
    u = np.clip(np.nan_to_num(np.asarray(losses, dtype=np.float64), nan=1e6), 0.0, None)
    if len(u) == 0:
        return u
    return np.clip(ROBUST_RULES[rule](u), 0.0, 1.0)
