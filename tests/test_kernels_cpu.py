"""The compiled CPU loops for slice insertion and extraction against the torch reference."""

from __future__ import annotations

import pytest
import torch

from cryograd.projectors import fourier_slice as fs
from cryograd.projectors.fourier_slice import _cpu as cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason="compiled CPU loops not built")


def _rotations(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[torch.linalg.det(q) < 0, :, 0] *= -1
    return q.to(dtype)


def _torch_insert(slices, geom, acc) -> None:
    vals = slices.reshape(geom.batch, -1)[:, geom.flat].reshape(-1)
    vals = torch.complex(vals.real, vals.imag * geom.sign)
    for off, wgt in zip(geom.corner_offsets(), geom.corner_weights()):
        acc[off:].index_add_(0, geom.base, vals * wgt)


@pytest.mark.parametrize("box", [16, 17, 24])
@pytest.mark.parametrize(
    ("dtype", "cdtype", "tol"),
    [(torch.float32, torch.complex64, 1e-5), (torch.float64, torch.complex128, 1e-12)],
)
def test_insert_and_extract_match_torch(box, dtype, cdtype, tol, monkeypatch) -> None:
    monkeypatch.setenv("CRYOGRAD_KERNELS", "torch")
    p = fs.padded_size(box, 2.0)
    rot = _rotations(6, dtype)
    geom = fs.slice_geometry(rot, box, p)
    g = torch.Generator().manual_seed(1)
    slices = torch.randn(6, box, box // 2 + 1, dtype=cdtype, generator=g)
    reference = fs.ExtendedSpectrum.zeros(p, dtype=cdtype)
    _torch_insert(slices, geom, reference)
    compiled = fs.ExtendedSpectrum.zeros(p, dtype=cdtype)
    cpu.insert_slices(slices, rot, p, compiled)
    assert (compiled - reference).abs().max() <= tol * reference.abs().max()

    spectrum = torch.randn(reference.numel(), dtype=cdtype, generator=g)
    expected = fs.extract_slices(spectrum, geom)  # torch path (forced by the environment)
    got = cpu.extract_slices(spectrum, rot, box, p)
    assert (got - expected).abs().max() <= tol * expected.abs().max()


@pytest.mark.parametrize("box", [15, 16])
def test_compiled_pair_passes_dot_product_test(box) -> None:
    p = fs.padded_size(box, 2.0)
    rot = _rotations(4, torch.float64, seed=3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(fs.ExtendedSpectrum.zeros(p).numel(), dtype=torch.complex128, generator=g)
    y = torch.randn(4, box, box // 2 + 1, dtype=torch.complex128, generator=g)
    ax = cpu.extract_slices(x, rot, box, p)
    aty = fs.ExtendedSpectrum.zeros(p, dtype=torch.complex128)
    cpu.insert_slices(y, rot, p, aty)
    lhs = torch.vdot(ax.reshape(-1), y.reshape(-1)).real
    rhs = torch.vdot(x, aty).real
    assert abs(lhs - rhs) / (ax.norm() * y.norm()) < 1e-12


def test_dispatch_follows_environment(monkeypatch) -> None:
    acc = torch.zeros(4, dtype=torch.complex64)
    monkeypatch.setenv("CRYOGRAD_KERNELS", "torch")
    assert not cpu.usable(acc)
    monkeypatch.setenv("CRYOGRAD_KERNELS", "auto")
    assert cpu.usable(acc)
    assert not cpu.usable(torch.zeros(4, dtype=torch.float16))
