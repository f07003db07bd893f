"""Choice between the Triton kernels and the torch path (``cryograd.kernels.use_kernels``)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from cryograd import kernels
from cryograd.errors import CryogradError

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
HAS_CUPY = importlib.util.find_spec("cupy") is not None


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("CRYOGRAD_KERNELS", raising=False)


def test_cpu_tensors_use_torch_by_default():
    assert kernels.kernel_mode() == "auto"
    assert kernels.use_kernels(torch.zeros(3)) is False
    assert kernels.use_kernels(torch.zeros(3), None, 1.0) is False


@pytest.mark.parametrize("value", ["torch", "TORCH", " torch "])
def test_torch_forces_reference_path(monkeypatch, value):
    monkeypatch.setenv("CRYOGRAD_KERNELS", value)
    assert kernels.use_kernels(torch.zeros(3)) is False
    if HAS_CUDA:
        assert kernels.use_kernels(torch.zeros(3, device="cuda")) is False


@pytest.mark.parametrize("value", ["", "auto"])
def test_auto_follows_the_device(monkeypatch, value):
    monkeypatch.setenv("CRYOGRAD_KERNELS", value)
    assert kernels.use_kernels(torch.zeros(3)) is False
    assert kernels.use_kernels(torch.zeros(3, device="meta")) is False
    if HAS_CUDA:
        assert kernels.use_kernels(torch.zeros(3, device="cuda")) is HAS_TRITON


def test_triton_forces_kernels_even_on_cpu(monkeypatch):
    monkeypatch.setenv("CRYOGRAD_KERNELS", "triton")
    if HAS_TRITON:
        assert kernels.use_kernels(torch.zeros(3)) is True
    else:
        with pytest.raises(CryogradError, match="Triton cannot be imported"):
            kernels.use_kernels(torch.zeros(3))


def test_triton_missing_is_reported(monkeypatch):
    monkeypatch.setattr(kernels, "_TRITON_OK", False)
    assert kernels.use_kernels(torch.zeros(3)) is False
    monkeypatch.setenv("CRYOGRAD_KERNELS", "triton")
    with pytest.raises(CryogradError, match="CRYOGRAD_KERNELS=triton"):
        kernels.use_kernels(torch.zeros(3))


def test_unknown_mode_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("CRYOGRAD_KERNELS", "cuda")
    with pytest.raises(CryogradError, match="CRYOGRAD_KERNELS='cuda'"):
        kernels.use_kernels(torch.zeros(3))


def test_check_inputs_names_the_mismatch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    a = torch.zeros(2, dtype=torch.float32)
    with pytest.raises(CryogradError, match="dtype mismatch.*'b'"):
        kernels.check_inputs("op", {"a": a, "b": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(CryogradError, match="device mismatch.*'r'"):
        kernels.check_inputs("op", {"a": a, "r": torch.zeros(2, device="meta")})
    with pytest.raises(CryogradError, match="float32 or float64"):
        kernels.check_inputs("op", {"a": torch.zeros(2, dtype=torch.float16)})
    # complex spectra count by their real dtype
    device, dtype = kernels.check_inputs("op", {"a": a, "s": torch.zeros(2, dtype=torch.complex64)})
    assert device == torch.device("cpu") and dtype == torch.float32


def test_importing_cryograd_kernels_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, cryograd.kernels; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA device and CuPy")
@pytest.mark.parametrize("projector", ["fourier", "real"])
def test_cupy_in_cupy_out_without_copies(projector):
    """CuPy arrays at the public operators: DLPack views in, CuPy views of the result out."""
    import cupy as cp

    from cryograd.arrays import from_tensor, to_tensor
    from cryograd.ctf import CTFParams
    from cryograd.forward import ForwardModel

    d, n = 32, 4
    vol = cp.random.standard_normal((d, d, d), dtype=cp.float32)
    rot = cp.asarray(torch.linalg.qr(torch.randn(n, 3, 3, dtype=torch.float64))[0].numpy(),
                     dtype=cp.float32)
    shifts = cp.asarray([[1.0, -2.0]] * n, dtype=cp.float32)
    ctf = CTFParams.create([12000.0] * n, device="cuda", dtype=torch.float32)

    # the conversions themselves share memory (no copy on the GPU)
    t = to_tensor(vol)
    assert t.is_cuda and t.data_ptr() == vol.data.ptr
    back = from_tensor(t, "cupy")
    assert isinstance(back, cp.ndarray) and back.data.ptr == t.data_ptr()

    model = ForwardModel(d, 2.0, projector=projector)
    images = model.project(vol, rot, shifts, ctf)
    assert isinstance(images, cp.ndarray) and images.shape == (n, d, d)
    assert images.device.id == torch.cuda.current_device()
    ref = model.project(torch.as_tensor(vol, device="cuda"), torch.as_tensor(rot, device="cuda"),
                        torch.as_tensor(shifts, device="cuda"), ctf)
    torch.testing.assert_close(torch.as_tensor(images, device="cuda"), ref)
    volume = model.backproject(images, rot, shifts, ctf)
    assert isinstance(volume, cp.ndarray) and volume.shape == (d, d, d)
    assert volume.dtype == cp.float32


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and Triton")
def test_cuda_tensors_choose_kernels_and_torch_overrides(monkeypatch):
    x = torch.zeros(3, device="cuda")
    assert kernels.use_kernels(x) is True
    monkeypatch.setenv("CRYOGRAD_KERNELS", "torch")
    assert kernels.use_kernels(x) is False


def test_out_of_memory_is_one_clear_line(monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch, "zeros", oom)
    msg = r"out of GPU memory allocating 8\.00 GiB.*--batch-size"
    with pytest.raises(CryogradError, match=msg):
        kernels.allocate("op", (1024, 1024, 1024, 2), device=torch.device("cpu"),
                         dtype=torch.float32)
