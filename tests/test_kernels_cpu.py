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


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _weighted_case(box: int, pad: float, dtype: torch.dtype, symmetry=None):
    """Insert one batch with CTF, shifts, premultiplied images, mixed pixel sizes and the ½ column
    through ``FourierSliceProjector.insert`` (the backend the environment picks)."""
    from cryograd.ctf import CTFParams
    from cryograd.projectors.fourier_slice.projector import FourierSliceProjector

    b = 9
    g = torch.Generator().manual_seed(7)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    rot = _rotations(b, dtype, seed=4)
    spectra = torch.randn(b, box, box // 2 + 1, generator=g, dtype=cdtype)
    ctf = CTFParams.create(
        torch.rand(b, generator=g, dtype=torch.float64) * 2e4 + 5e3,
        torch.rand(b, generator=g, dtype=torch.float64) * 2e4 + 5e3,
        torch.rand(b, generator=g, dtype=torch.float64) * 180,
        phase_shift_degrees=torch.rand(b, generator=g, dtype=torch.float64) * 30,
        b_factor=torch.rand(b, generator=g, dtype=torch.float64) * 80,
        scale=torch.rand(b, generator=g, dtype=torch.float64) + 0.5,
    )
    shifts = torch.randn(b, 2, generator=g, dtype=dtype) * 3
    premultiplied = torch.arange(b) % 3 == 0
    apix = 1.0 + torch.rand(b, generator=g, dtype=torch.float64)
    col = torch.ones(box // 2 + 1, dtype=dtype)
    col[0] = 0.5
    proj = FourierSliceProjector(box, pad=pad)
    num, wts = proj.new_accumulators("cpu", dtype)
    proj.insert(
        spectra,
        rot,
        num,
        wts,
        ctf=ctf,
        shifts_px=shifts,
        pixel_size_angstrom=apix,
        premultiplied=premultiplied,
        sample_weights=col,
        symmetry=symmetry,
    )
    return num, wts


@pytest.mark.parametrize("box", [16, 17])
@pytest.mark.parametrize("pad", [1.0, 2.0])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 5e-5), (torch.float64, 1e-12)], ids=["f32", "f64"]
)
def test_threaded_weighted_insertion_matches_torch(
    box, pad, dtype, tol, monkeypatch, restore_threads
) -> None:
    """The compiled insertion (CTF, ramp, weights in the loop) on 1, 2 and 3 threads equals the
    torch reference (CTF values, ramp and weights as arrays, ``index_add_``)."""
    monkeypatch.setenv("CRYOGRAD_KERNELS", "torch")
    ref_num, ref_w = _weighted_case(box, pad, dtype)
    monkeypatch.setenv("CRYOGRAD_KERNELS", "cpu")
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        num, wts = _weighted_case(box, pad, dtype)
        assert (num - ref_num).abs().max() <= tol * ref_num.abs().max(), threads
        assert (wts - ref_w).abs().max() <= tol * ref_w.abs().max(), threads


def test_threaded_weighted_insertion_with_symmetry(monkeypatch, restore_threads) -> None:
    from cryograd.symmetry import symmetry_matrices

    sym = symmetry_matrices("D2").to(torch.float64)
    monkeypatch.setenv("CRYOGRAD_KERNELS", "torch")
    ref_num, ref_w = _weighted_case(16, 2.0, torch.float64, symmetry=sym)
    monkeypatch.setenv("CRYOGRAD_KERNELS", "cpu")
    torch.set_num_threads(2)
    num, wts = _weighted_case(16, 2.0, torch.float64, symmetry=sym)
    assert (num - ref_num).abs().max() <= 1e-12 * ref_num.abs().max()
    assert (wts - ref_w).abs().max() <= 1e-12 * ref_w.abs().max()


@pytest.mark.parametrize("box", [16, 17])
@pytest.mark.parametrize("pad", [1.0, 2.0])
def test_threaded_plain_pair_matches_torch(box, pad, monkeypatch, restore_threads) -> None:
    """The plain scatter and gather on 1, 2 and 3 threads against the torch reference."""
    monkeypatch.setenv("CRYOGRAD_KERNELS", "torch")
    p = fs.padded_size(box, pad)
    rot = _rotations(11, torch.float64, seed=5)
    geom = fs.slice_geometry(rot, box, p)
    g = torch.Generator().manual_seed(3)
    slices = torch.randn(11, box, box // 2 + 1, dtype=torch.complex128, generator=g)
    reference = fs.ExtendedSpectrum.zeros(p, dtype=torch.complex128)
    _torch_insert(slices, geom, reference)
    spectrum = torch.randn(reference.numel(), dtype=torch.complex128, generator=g)
    expected = fs.extract_slices(spectrum, geom)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        compiled = fs.ExtendedSpectrum.zeros(p, dtype=torch.complex128)
        cpu.insert_slices(slices, rot, p, compiled)
        assert (compiled - reference).abs().max() <= 1e-12 * reference.abs().max(), threads
        got = cpu.extract_slices(spectrum, rot, box, p)
        assert (got - expected).abs().max() <= 1e-12 * expected.abs().max(), threads


@pytest.mark.parametrize("padded", [16, 17, 34])
def test_fold_packed_equals_fold(padded) -> None:
    """The packed grid's fold gives the values and weights that :meth:`fold` gives."""
    g = torch.Generator().manual_seed(padded)
    packed = torch.randn(fs.ExtendedSpectrum.zeros_packed(padded).numel(), generator=g)
    cells = packed.view(-1, 3)
    num, wts = fs.ExtendedSpectrum.fold_packed(packed, padded)
    expected_num = fs.ExtendedSpectrum.fold(torch.complex(cells[:, 0], cells[:, 1]), padded)
    expected_w = fs.ExtendedSpectrum.fold(cells[:, 2].contiguous(), padded)
    assert torch.allclose(num, expected_num, atol=1e-5)
    assert torch.allclose(wts, expected_w, atol=1e-5)


@pytest.mark.parametrize("padded", [2, 16, 17, 34])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_fold_equals_torch_fold(padded, dtype, restore_threads) -> None:
    """The compiled fold of a packed grid on 1, 2 and 3 threads gives the torch fold's values to
    the last bit (the same additions in the same order)."""
    g = torch.Generator().manual_seed(padded)
    packed = torch.randn(fs.ExtendedSpectrum.zeros_packed(padded).numel(), generator=g)
    packed = packed.to(dtype)
    expected_num, expected_w = fs.ExtendedSpectrum.fold_packed(packed, padded)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        num, wts = cpu.fold_packed(packed, padded)
        assert num.dtype == expected_num.dtype and wts.dtype == dtype
        assert torch.equal(num, expected_num), threads
        assert torch.equal(wts, expected_w), threads
