"""Conjugate gradients: known systems, the Toeplitz operator, agreement with direct."""

from __future__ import annotations

import numpy as np
import torch

from cryograd.forward import ForwardModel
from cryograd.solvers.cg import solve_cg
from cryograd.solvers.direct import wiener_reconstruct
from cryograd.solvers.insertion import insert_particles, lam_to_wiener
from cryograd.solvers.krylov import conjugate_gradient
from cryograd.solvers.normal import (
    RealSpaceNormalOperator,
    ToeplitzNormalOperator,
    normal_rhs_from_insertion,
)
from cryograd.validation import fsc
from tests._recon_data import make_particles, small_map


def test_cg_solves_spd_system_like_numpy(rng):
    a = torch.randn(40, 40, generator=rng, dtype=torch.float64)
    h = a @ a.T + 0.5 * torch.eye(40, dtype=torch.float64)
    b = torch.randn(40, generator=rng, dtype=torch.float64)
    res = conjugate_gradient(lambda x: h @ x, b, tol=1e-12, max_iter=200)
    assert res.converged
    np.testing.assert_allclose(res.x.numpy(), np.linalg.solve(h.numpy(), b.numpy()), rtol=1e-8)
    # preconditioned (Jacobi) gives the same answer in no more iterations
    d = torch.diagonal(h)
    pre = conjugate_gradient(
        lambda x: h @ x, b, tol=1e-12, max_iter=200, preconditioner=lambda r: r / d
    )
    np.testing.assert_allclose(pre.x.numpy(), res.x.numpy(), rtol=1e-8)
    assert pre.iterations <= res.iterations


def test_normal_rhs_equals_forward_model_backprojection():
    vol, px = small_map(24)
    ps, _ = make_particles(vol, 200, px, snr=1.0, seed=5)
    ins = insert_particles(ps, np.arange(200), progress=False, dtype=torch.float64)
    from cryograd.solvers.batches import load_batch

    b = load_batch(ps, np.arange(200), dtype=torch.float64)
    exact = ForwardModel(24, px).backproject(b.images, b.rotations, b.shifts_px, b.ctf)
    got = normal_rhs_from_insertion(ins)
    assert float((got - exact).norm() / exact.norm()) < 1e-10


def test_toeplitz_operator_approximates_exact_normal_operator():
    """The Toeplitz ``AᵀA`` on a map agrees with the exact one (projector + adjoint per particle)
    to FSC ≥ 0.98 at every shell and 15 % overall (the gridding window is what differs)."""
    vol, px = small_map(24)
    ps, _ = make_particles(vol, 300, px, snr=None, seed=6)
    ins = insert_particles(ps, np.arange(300), progress=False, dtype=torch.float64)
    op = ToeplitzNormalOperator(ins.weights, 24)
    model = ForwardModel(24, px)
    exact_op = RealSpaceNormalOperator(model, ps, np.arange(300), dtype=torch.float64)
    x = torch.from_numpy(vol)
    exact = exact_op.normal(x)
    approx = op.normal(x)
    assert float((approx - exact).norm() / exact.norm()) < 0.15
    assert fsc(approx, exact).numpy()[1:].min() > 0.98


def test_cg_converges_to_direct_with_same_lambda():
    """``(AᵀA + λI) x = Aᵀb`` by CG agrees with the direct division ``N / (W + λD²/P³)``."""
    vol, px = small_map(32)
    ps, _ = make_particles(vol, 1500, px, snr=0.05, seed=7)
    ins = insert_particles(ps, np.arange(1500), progress=False, dtype=torch.float64)
    lam = 2000.0
    res = solve_cg(ps, lam=lam, insertion=ins, tol=1e-7, progress=False, dtype=torch.float64)
    assert res.converged and res.iterations < 100
    direct = wiener_reconstruct(ins, lam_to_wiener(lam, 32, ins.padded))
    curve = fsc(res.x, direct).numpy()
    assert curve[1:].min() >= 0.99, curve


def test_cg_real_space_projector_matches_fourier_solution():
    vol, px = small_map(16)
    ps, _ = make_particles(vol, 150, px, snr=None, seed=8)
    lam = 50.0
    real = solve_cg(
        ps, lam=lam, projector="real", tol=1e-6, max_iter=100, progress=False, dtype=torch.float64
    )
    four = solve_cg(ps, lam=lam, projector="fourier", tol=1e-6, progress=False, dtype=torch.float64)
    assert real.converged
    assert fsc(real.x, four.x).numpy()[1:7].min() > 0.95


def test_real_space_operator_with_cached_poses_and_ctfs_is_unchanged():
    """Poses and CTFs kept on the device across iterations give the streamed ``AᵀA x``."""
    vol, px = small_map(16)
    ps, _ = make_particles(vol, 40, px, snr=None, seed=7)
    model = ForwardModel(16, px, "real")
    x = torch.from_numpy(vol).float()
    streamed = RealSpaceNormalOperator(model, ps, np.arange(40), lam=0.5, batch_size=16)
    cached = RealSpaceNormalOperator(model, ps, np.arange(40), lam=0.5, batch_size=16, cache=True)
    torch.testing.assert_close(cached(x), streamed(x), rtol=1e-6, atol=1e-6)


def test_cg_scalars_do_not_depend_on_summation_order():
    """Dot products and norms are summed in float64: CG on a float32 system and on the same system
    with its entries permuted (another summation order, as on another number of processes) take
    the same steps; with float32 sums they drift apart (~1e-6 here)."""
    g = torch.Generator().manual_seed(0)
    n = 64**3
    diag = (torch.rand(n, generator=g, dtype=torch.float64) ** 4 * 1e3 + 1e-2).float()
    b = torch.randn(n, generator=g) * torch.rand(n, generator=g) ** 3
    perm = torch.randperm(n, generator=g)
    a = conjugate_gradient(lambda x: diag * x, b, tol=1e-7, max_iter=60)
    p = conjugate_gradient(lambda x: diag[perm] * x, b[perm], tol=1e-7, max_iter=60)
    assert a.x.dtype == torch.float32 and a.iterations == p.iterations
    assert float((a.x[perm] - p.x).norm() / a.x.norm()) < 1e-9
