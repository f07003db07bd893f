"""Adam/SGD: validation loss goes down, agreement with CG, loss equivalences, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryograd.errors import CryogradError
from cryograd.forward import ForwardModel
from cryograd.solvers.cg import solve_cg
from cryograd.solvers.direct import reconstruct_direct
from cryograd.solvers.gradient import epoch_permutation, split_validation, train
from cryograd.solvers.losses import L1Loss, L2Loss, SortedL1Loss
from cryograd.solvers.penalties import L2Penalty, SortedL1Penalty
from cryograd.validation import fsc
from tests._recon_data import make_particles, small_map


def test_split_and_permutations_are_seeded():
    idx = np.arange(100, 300)
    tr, va = split_validation(idx, 0.1, seed=3)
    assert len(va) == 20 and len(tr) == 180 and not set(tr) & set(va)
    tr2, va2 = split_validation(idx, 0.1, seed=3)
    np.testing.assert_array_equal(va, va2)
    np.testing.assert_array_equal(epoch_permutation(50, 1, 4), epoch_permutation(50, 1, 4))
    assert not np.array_equal(epoch_permutation(50, 1, 4), epoch_permutation(50, 1, 5))
    with pytest.raises(CryogradError, match="val_fraction"):
        train(None, idx, model=None, loss_fn=L2Loss(), val_fraction=0.5)
    for bad, match in (
        (dict(lr=-1.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(epochs=0), "epochs"),
        (dict(batch_size=0), "batch_size"),
    ):
        with pytest.raises(CryogradError, match=match):
            train(None, idx, model=None, loss_fn=L2Loss(), **bad)


@pytest.mark.parametrize("method", ["adam", "sgd"])
def test_training_lowers_validation_loss(method):
    vol, px = small_map(24)
    ps, _ = make_particles(vol, 400, px, snr=0.5, seed=10)
    model = ForwardModel(24, px)
    if method == "adam":
        lr = 0.1 * float(np.std(vol))
    else:
        from cryograd.solvers.minibatch import default_lr as _default_lr

        lr = _default_lr("sgd", None, "zero", ps, np.arange(400), model, True, "cpu", torch.float32)
    res = train(
        ps,
        np.arange(400),
        model=model,
        loss_fn=L2Loss(),
        method=method,
        epochs=3,
        lr=lr,
        batch_size=50,
        val_fraction=0.1,
        seed=0,
        progress=False,
    )
    assert res.val_loss[-1] < res.val_loss[0]
    assert res.train_loss[-1] < res.train_loss[1]


def test_adam_l2_ends_close_to_cg():
    """Adam on ``mean ‖Ax − b‖² + lam ‖x‖²`` (from the direct map, cosine schedule) ends within
    0.05 of the FSC to the truth that CG on ``(AᵀA + N lam) x = Aᵀb`` reaches, at every shell up
    to the half-map resolution (FSC 0.143 of two independent half reconstructions)."""
    vol, px = small_map(24)
    n = 600
    ps, _ = make_particles(vol, n, px, snr=0.2, seed=11)
    model = ForwardModel(24, px)
    lam = 0.2
    init = reconstruct_direct(ps, progress=False)
    res = train(
        ps,
        np.arange(n),
        model=model,
        loss_fn=L2Loss(),
        penalty=L2Penalty(lam),
        method="adam",
        epochs=15,
        lr=0.01 * float(init.std()),
        batch_size=100,
        val_fraction=0.05,
        seed=1,
        patience=100,
        init_volume=init,
        progress=False,
        lr_schedule="cosine",
    )
    train_idx, _ = split_validation(np.arange(n), 0.05, 1)
    ref = solve_cg(ps, train_idx, lam=len(train_idx) * lam, tol=1e-6, progress=False)
    assert ref.converged
    f_adam = fsc(res.last_volume, vol).numpy()
    f_cg = fsc(ref.x, vol).numpy()
    h1 = reconstruct_direct(ps, np.arange(0, n, 2), progress=False)
    h2 = reconstruct_direct(ps, np.arange(1, n, 2), progress=False)
    half = fsc(h1, h2).numpy()
    below = np.nonzero(half[1:] < 0.143)[0]
    top = int(below[0]) if below.size else len(half) - 1
    assert top >= 4
    assert np.abs(f_adam[1 : top + 1] - f_cg[1 : top + 1]).max() <= 0.05, (f_adam, f_cg, top)


def test_sorted_l1_with_equal_weights_trains_like_l1():
    vol, px = small_map(16)
    ps, _ = make_particles(vol, 120, px, snr=0.5, seed=12)
    model = ForwardModel(16, px)
    kw = dict(
        model=model,
        method="adam",
        epochs=1,
        lr=0.05,
        batch_size=40,
        val_fraction=0.1,
        seed=2,
        progress=False,
    )
    a = train(ps, np.arange(120), loss_fn=SortedL1Loss("equal"), **kw)
    b = train(ps, np.arange(120), loss_fn=L1Loss(), **kw)
    torch.testing.assert_close(a.last_volume, b.last_volume, rtol=1e-5, atol=1e-6)


def test_slope_penalty_is_applied_by_prox():
    vol, px = small_map(16)
    ps, _ = make_particles(vol, 80, px, snr=1.0, seed=13)
    model = ForwardModel(16, px)
    kw = dict(
        model=model,
        loss_fn=L2Loss(),
        method="sgd",
        epochs=1,
        lr=1e-4,
        batch_size=40,
        val_fraction=0.1,
        seed=2,
        progress=False,
        init_volume=torch.from_numpy(vol).float(),
    )
    plain = train(ps, np.arange(80), **kw)
    sparse = train(ps, np.arange(80), penalty=SortedL1Penalty(5e3, "bh"), **kw)
    assert int((sparse.last_volume == 0).sum()) > int((plain.last_volume == 0).sum()) + 100


def test_particle_cache_gives_the_streamed_batches_and_training():
    """The device cache (forced on here; automatic only on CUDA) returns what ``load_batch``
    reads from the stacks, and training with it follows the streamed run step for step."""
    from cryograd.solvers.batches import DeviceParticleCache, load_batch, should_cache

    vol, px = small_map(16)
    ps, _ = make_particles(vol, 90, px, snr=0.5, seed=14)
    ps.ctf_premultiplied = np.arange(90) % 3 == 0
    idx = np.arange(5, 90)
    cache = DeviceParticleCache(ps, idx, device="cpu", dtype=torch.float32, batch_size=32)
    ask = np.array([70, 6, 33, 34, 89])
    got, ref = cache.batch(ask), load_batch(ps, ask)
    for name in ("images", "rotations", "shifts_px", "ctf", "premultiplied"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=0, atol=0)
    np.testing.assert_array_equal(got.indices, ask)
    with pytest.raises(KeyError):
        cache.batch(np.array([2]))
    assert should_cache(90, 16, "cpu", torch.float32) is False  # the CPU streams
    model = ForwardModel(16, px)
    kw = dict(
        model=model,
        loss_fn=L2Loss(),
        method="adam",
        epochs=2,
        lr=0.05,
        batch_size=20,
        val_fraction=0.1,
        seed=3,
        progress=False,
    )
    a = train(ps, idx, cache=True, **kw)
    b = train(ps, idx, cache=False, **kw)
    torch.testing.assert_close(a.last_volume, b.last_volume, rtol=1e-6, atol=1e-7)
    assert a.val_loss == pytest.approx(b.val_loss, rel=1e-6)


def test_direct_start_from_training_particles_only_lowers_validation_loss():
    """A start map given as a function gets the training particles only (none of the validation
    ones), so the validation loss measures it honestly and Adam lowers it from there."""
    vol, px = small_map(24)
    n = 400
    ps, _ = make_particles(vol, n, px, snr=0.2, seed=15)
    seen = []

    def start(train_idx):
        seen.append(np.asarray(train_idx))
        return reconstruct_direct(ps, train_idx, progress=False)

    model = ForwardModel(24, px)
    std = float(reconstruct_direct(ps, np.arange(n), progress=False).std())
    res = train(
        ps,
        np.arange(n),
        model=model,
        loss_fn=L2Loss(),
        method="adam",
        epochs=2,
        lr=0.02 * std,
        batch_size=50,
        val_fraction=0.1,
        seed=4,
        progress=False,
        init_volume=start,
        patience=5,
    )
    train_idx, val_idx = split_validation(np.arange(n), 0.1, 4)
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], train_idx)
    assert not set(seen[0]) & set(val_idx)
    assert res.val_loss[1] < res.val_loss[0], res.val_loss
