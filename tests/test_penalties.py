"""Penalties and the SLOPE proximal operator against brute-force solutions and scipy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import isotonic_regression, minimize

from cryograd.solvers.penalties import (
    L1Penalty,
    L2Penalty,
    SortedL1Penalty,
    TVPenalty,
    isotonic_nonincreasing,
    make_penalty,
    prox_sorted_l1,
    soft_threshold,
)


def slope_objective(x: np.ndarray, v: np.ndarray, lam: np.ndarray) -> float:
    return 0.5 * np.sum((x - v) ** 2) + np.sum(lam * np.sort(np.abs(x))[::-1])


def prox_by_enumeration(v: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Minimise the SLOPE prox objective over every grouping of the sorted magnitudes.

    The minimiser keeps the order and signs of ``v`` and is constant on contiguous groups of the
    sorted magnitudes, each group at ``max(mean(|v|_g − λ_g), 0)``; the best candidate under the
    true objective is the minimiser.
    """
    n = v.size
    order = np.argsort(-np.abs(v))
    a = np.abs(v)[order]
    best, best_x = np.inf, None
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        mags = np.empty(n)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            mags[lo:hi] = max(np.mean(a[lo:hi] - lam[lo:hi]), 0.0)
        x = np.empty(n)
        x[order] = mags
        x *= np.sign(v)
        f = slope_objective(x, v, lam)
        if f < best:
            best, best_x = f, x
    return best_x


def prox_by_qp(v: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The same problem as a smooth convex program: ``J(x) = Σ_k (λ_k − λ_{k+1}) · top_k(|x|)``.

    Variables ``(x, s, t)``: ``s ≥ |x|`` and ``t_k ≥`` the sum of ``s`` over every ``k``-subset.
    """
    n = v.size
    dlam = lam - np.append(lam[1:], 0.0)

    def f(z):
        x, t = z[:n], z[2 * n :]
        return 0.5 * np.sum((x - v) ** 2) + np.dot(dlam, t)

    cons = []
    for i in range(n):
        cons.append({"type": "ineq", "fun": lambda z, i=i: z[n + i] - z[i]})
        cons.append({"type": "ineq", "fun": lambda z, i=i: z[n + i] + z[i]})
    for k in range(1, n + 1):
        for subset in itertools.combinations(range(n), k):
            idx = [n + i for i in subset]
            cons.append(
                {"type": "ineq", "fun": lambda z, k=k, idx=idx: z[2 * n + k - 1] - z[idx].sum()}
            )
    z0 = np.concatenate([v, np.abs(v) + 1, np.full(n, np.abs(v).sum() + 1)])
    res = minimize(f, z0, constraints=cons, method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
    # SLSQP may stop at its precision limit ("positive directional derivative") at the optimum
    assert res.success or res.status == 8, res.message
    return res.x[:n]


def test_isotonic_matches_scipy():
    gen = np.random.default_rng(3)
    for n in (1, 2, 7, 100, 5000):
        y = gen.normal(size=n) - np.linspace(0, 1, n) * gen.uniform(-2, 2)
        ref = isotonic_regression(y, increasing=False).x
        got = isotonic_nonincreasing(torch.from_numpy(y)).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-12)
    # a long cascade of merges (falls through to the stack sweep)
    y = np.concatenate([np.linspace(5, 1, 3000), [4000.0]])
    np.testing.assert_allclose(
        isotonic_nonincreasing(torch.from_numpy(y)).numpy(),
        isotonic_regression(y, increasing=False).x,
        atol=1e-9,
    )


@pytest.mark.parametrize("seed", range(12))
def test_slope_prox_matches_brute_force(seed):
    gen = np.random.default_rng(seed)
    n = int(gen.integers(2, 6))
    v = gen.normal(size=n) * 2
    if seed % 3 == 0:
        v[1] = -v[0]  # ties in magnitude
    lam = np.sort(gen.uniform(0, 1.5, size=n))[::-1].copy()
    got = prox_sorted_l1(torch.from_numpy(v), torch.from_numpy(lam)).numpy()
    enum = prox_by_enumeration(v, lam)
    np.testing.assert_allclose(got, enum, atol=1e-10)
    qp = prox_by_qp(v, lam)
    np.testing.assert_allclose(got, qp, atol=1e-4)
    assert slope_objective(got, v, lam) <= slope_objective(qp, v, lam) + 1e-12
    # optimality: no random perturbation improves the objective
    f0 = slope_objective(got, v, lam)
    for _ in range(200):
        assert slope_objective(got + gen.normal(size=n) * 1e-3, v, lam) >= f0 - 1e-12


def test_slope_prox_equal_weights_is_soft_threshold(rng):
    v = torch.randn(200, generator=rng, dtype=torch.float64)
    lam = torch.full((200,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(prox_sorted_l1(v, lam), soft_threshold(v, 0.3))


def test_slope_prox_float32_shape_kept(rng):
    v = torch.randn(4, 5, 6, generator=rng)
    lam = torch.linspace(1, 0, 120)
    out = prox_sorted_l1(v, lam)
    assert out.shape == v.shape and out.dtype == torch.float32


def test_penalty_objects(rng):
    x = torch.randn(6, 6, 6, generator=rng, dtype=torch.float64)
    xn = x.numpy()
    # l2: value and autograd gradient 2·lam·x
    p = L2Penalty(0.5)
    xg = x.clone().requires_grad_(True)
    p.smooth(xg).backward()
    assert p.value(x) == pytest.approx(0.5 * (xn**2).sum())
    torch.testing.assert_close(xg.grad, x)
    # l1: soft threshold by step·lam
    q = L1Penalty(2.0)
    y = x.clone()
    q.prox_(y, 0.1)
    np.testing.assert_allclose(y.numpy(), np.sign(xn) * np.maximum(np.abs(xn) - 0.2, 0))
    # sorted-l1 with the linear sequence
    s = SortedL1Penalty(1.0, "linear")
    y = x.clone()
    s.prox_(y, 0.05)
    lam = s.lambdas(x.numel(), x.device) * 0.05
    np.testing.assert_allclose(y.numpy().ravel(), prox_sorted_l1(x, lam).numpy().ravel())
    # tv against a direct numpy formula
    eps = 1e-3
    dz = np.zeros_like(xn)
    dy = np.zeros_like(xn)
    dx = np.zeros_like(xn)
    dz[:-1] = np.diff(xn, axis=0)
    dy[:, :-1] = np.diff(xn, axis=1)
    dx[:, :, :-1] = np.diff(xn, axis=2)
    tv = (np.sqrt(dz**2 + dy**2 + dx**2 + eps**2) - eps).sum()
    assert TVPenalty(0.3, eps).value(x) == pytest.approx(0.3 * tv)
    assert make_penalty("none").value(x) == 0.0
    with pytest.raises(ValueError):
        make_penalty("l0")


def test_penalties_come_from_the_registry():
    """``PENALTIES`` holds every penalty by name (the ``--penalty`` choices), each made with its
    own options; an unknown name is refused."""
    from cryograd.solvers.penalties import PENALTIES, TVPenalty, make_penalty

    assert list(PENALTIES) == ["none", "l2", "l1", "sorted-l1", "tv"]
    for name in PENALTIES:
        assert make_penalty(name, 0.5).name == name
    assert make_penalty("none", 3.0).lam == 0.0  # no penalty has no weight
    slope = make_penalty("sorted-l1", 2.0, sequence="linear", q=0.3)
    assert (slope.lam, slope.sequence, slope.q) == (2.0, "linear", 0.3)
    tv = make_penalty("tv", 1.0, tv_eps=1e-2)
    assert isinstance(tv, TVPenalty) and tv.eps == 1e-2
    with pytest.raises(ValueError, match="unknown penalty"):
        make_penalty("l0")
