"""Tests of NumPy / CuPy / torch interoperability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryograd.arrays import array_kind, from_tensor, like, to_tensor


def test_numpy_roundtrip_zero_copy():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = to_tensor(a)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    t[0, 0] = 42.0  # shares memory with the NumPy array
    assert a[0, 0] == 42.0
    back = from_tensor(t, "numpy")
    assert isinstance(back, np.ndarray)
    assert np.shares_memory(back, a)


def test_readonly_and_byteswapped_numpy_are_copied():
    a = np.arange(6, dtype=">f4")
    t = to_tensor(a)
    np.testing.assert_array_equal(t.numpy(), np.arange(6, dtype=np.float32))
    b = np.arange(6, dtype=np.float64)
    b.setflags(write=False)
    t = to_tensor(b, dtype=torch.float32)
    assert t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), b.astype(np.float32))


def test_torch_in_torch_out():
    t = torch.ones(3, requires_grad=True)
    assert array_kind(t) == "torch"
    assert to_tensor(t) is t
    assert like(t * 2, t).__class__ is torch.Tensor
    assert array_kind([1, 2]) == "other"
    assert isinstance(to_tensor([1.0, 2.0]), torch.Tensor)


def test_forward_model_returns_kind_given():
    from cryograd.forward import ForwardModel

    n = 10
    model = ForwardModel(n, 1.0)
    vol_np = np.random.default_rng(1).standard_normal((n, n, n))
    rot_np = np.eye(3)[None].repeat(2, axis=0)
    out_np = model.project(vol_np, rot_np)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float64
    out_t = model.project(torch.from_numpy(vol_np), torch.from_numpy(rot_np))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_np, out_t.numpy())


def _cupy_cuda():
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:  # noqa: BLE001 - any failure means no usable CuPy
        return None


@pytest.mark.gpu
def test_cupy_roundtrip():
    cupy = _cupy_cuda()
    if cupy is None or not torch.cuda.is_available():
        pytest.skip("CuPy with CUDA not available")
    a = cupy.arange(8, dtype=cupy.float32)
    t = to_tensor(a)
    assert t.device.type == "cuda"
    t[0] = 5.0
    assert float(a[0]) == 5.0  # zero copy through DLPack
    back = from_tensor(t, "cupy")
    assert array_kind(back) == "cupy"
    from cryograd.forward import ForwardModel

    vol = cupy.random.standard_normal((10, 10, 10), dtype=cupy.float32)
    rot = cupy.asarray(np.eye(3, dtype=np.float32)[None])
    assert array_kind(ForwardModel(10, 1.0).project(vol, rot)) == "cupy"
