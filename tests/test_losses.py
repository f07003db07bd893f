"""Data terms: each against its formula, computed independently with numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from cryograd.solvers.losses import (
    HUBER_K,
    HuberLoss,
    L1Loss,
    L2Loss,
    SortedL1Loss,
    lambda_sequence,
    make_loss,
    robust_sigma,
    sorted_l1_weights,
)


@pytest.fixture
def residuals(rng) -> torch.Tensor:
    return torch.randn(6, 5, 5, generator=rng, dtype=torch.float64)


def test_l2_l1_huber_match_formulas(residuals):
    r = residuals.numpy()
    assert float(L2Loss()(residuals, normalizer=6)) == pytest.approx((r**2).sum() / 6)
    assert float(L1Loss()(residuals, normalizer=6)) == pytest.approx(np.abs(r).sum() / 6)
    delta = 0.7
    a = np.abs(r)
    huber = np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta)).sum() / 6
    assert float(HuberLoss(delta)(residuals, normalizer=6)) == pytest.approx(huber)


def test_lambda_sequences():
    n = 50
    j = np.arange(1, n + 1)
    bh = norm.ppf(1 - 0.1 * j / (2 * n))
    np.testing.assert_allclose(lambda_sequence(n, "bh", q=0.1).numpy(), bh / bh.mean(), rtol=1e-10)
    lin = (n - j + 1.0) / (n - j + 1.0).mean()
    np.testing.assert_allclose(lambda_sequence(n, "linear").numpy(), lin, rtol=1e-12)
    np.testing.assert_array_equal(lambda_sequence(n, "equal").numpy(), np.ones(n))
    given = lambda_sequence(7, [3.0, 2.0, 2.0, 1.0, 0.5, 0.0, 0.0]).numpy()
    assert np.all(np.diff(given) <= 0) and given.mean() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lambda_sequence(3, [1.0, 2.0, 0.0])


def test_sorted_l1_equal_weights_is_l1(residuals):
    a = residuals.clone().requires_grad_(True)
    b = residuals.clone().requires_grad_(True)
    la = SortedL1Loss("equal")(a, normalizer=6)
    lb = L1Loss()(b, normalizer=6)
    la.backward()
    lb.backward()
    assert float(la.detach()) == pytest.approx(float(lb.detach()), rel=1e-12)
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("kind", ["bh", "linear"])
def test_sorted_l1_value_and_gradient(residuals, kind):
    r = residuals.clone().requires_grad_(True)
    loss = SortedL1Loss(kind, q=0.2)(r, normalizer=6)
    loss.backward()
    flat = residuals.numpy().ravel()
    lam = lambda_sequence(flat.size, kind, q=0.2).numpy()
    order = np.argsort(-np.abs(flat))
    expected = (lam * np.abs(flat)[order]).sum() / 6
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    grad = np.empty_like(flat)
    grad[order] = lam * np.sign(flat[order]) / 6
    np.testing.assert_allclose(r.grad.numpy().ravel(), grad, rtol=1e-12)


def test_sorted_l1_ties_and_shards():
    """Tied entries share weights; shares of a sharded batch add up to the whole batch's value."""
    values = torch.tensor([3.0, -1.0, 1.0, 2.0, -3.0, 0.5, 1.0, 2.0, 0.0], dtype=torch.float64)
    lam = lambda_sequence(values.numel(), "linear")
    expected = float((torch.sort(values.abs(), descending=True).values * lam).sum())
    sorted_all = torch.sort(values.abs()).values
    total = 0.0
    for shard in (values[:4], values[4:7], values[7:]):
        w = sorted_l1_weights(shard.abs(), sorted_all, lam)
        total += float((w * shard.abs()).sum())
    assert total == pytest.approx(expected, rel=1e-12)


def test_make_loss_names():
    for name in ("l2", "l1", "huber", "sorted-l1"):
        assert make_loss(name).name == name
    with pytest.raises(ValueError):
        make_loss("l3")


def test_robust_sigma_matches_scipy_and_ignores_outliers(rng):
    from scipy.stats import median_abs_deviation

    x = 3.0 * torch.randn(20000, generator=rng, dtype=torch.float64) + 5.0
    expected = median_abs_deviation(x.numpy(), scale="normal")
    assert robust_sigma(x) == pytest.approx(expected, rel=1e-3)
    assert robust_sigma(x) == pytest.approx(3.0, rel=0.03)
    x[:1000] = 1e4  # 5 % gross outliers barely move it (the standard deviation goes to ~2000)
    assert robust_sigma(x) == pytest.approx(3.0, rel=0.1)


def test_huber_default_threshold_scales_with_the_noise(rng):
    """Without ``delta`` the threshold is 1.345 σ̂ of the first residuals, whatever their units."""
    for sigma in (0.01, 1.0, 250.0):
        r = sigma * torch.randn(8, 16, 16, generator=rng, dtype=torch.float64)
        loss = HuberLoss()
        value = float(loss(r, normalizer=8))
        assert loss.delta == pytest.approx(HUBER_K * sigma, rel=0.08)
        a = np.abs(r.numpy())
        d = loss.delta
        expected = np.where(a <= d, 0.5 * a**2, d * (a - 0.5 * d)).sum() / 8
        assert value == pytest.approx(expected, rel=1e-12)
        first = loss.delta
        loss(100 * r, normalizer=8)
        assert loss.delta == first  # fixed after the first call


def test_losses_come_from_the_registry_and_huber_calibrates_itself(rng):
    """``LOSSES`` holds every loss by name (the ``--loss`` choices); ``calibrate`` fixes Huber's
    threshold to 1.345 σ̂ of the residuals it is given (MAD from scipy), once, and a loss without
    a data-dependent setting has nothing to calibrate."""
    from scipy.stats import median_abs_deviation

    from cryograd.solvers.losses import LOSSES, register_loss

    assert list(LOSSES) == ["l2", "l1", "huber", "sorted-l1"]
    assert all(LOSSES[name].name == name for name in LOSSES)
    r = 7.0 * torch.randn(3, 15, 15, generator=rng, dtype=torch.float64)  # odd: one median
    loss = make_loss("huber")
    assert loss.needs_calibration
    chosen = loss.calibrate(r)
    sigma = median_abs_deviation(r.numpy().ravel(), scale="normal")
    assert chosen["noise_sigma"] == pytest.approx(sigma, rel=1e-6)
    assert loss.delta == chosen["huber_delta"] == pytest.approx(HUBER_K * sigma, rel=1e-6)
    assert not loss.needs_calibration and loss.calibrate(100 * r) == {}
    assert make_loss("huber", huber_delta=2.0).calibrate(r) == {}
    assert make_loss("l2").calibrate(r) == {} and not make_loss("l1").needs_calibration

    class Cauchy(HuberLoss):
        name = "test-cauchy"

    try:
        register_loss(Cauchy)
        assert isinstance(make_loss("test-cauchy", huber_delta=1.5), Cauchy)
    finally:
        LOSSES.pop("test-cauchy", None)
