"""Choice between the Triton kernels and the torch path (``cryograd.kernels.use_kernels``)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from cryograd import kernels
from cryograd.errors import CryogradError
from cryograd.projectors import backend
from tests._kernel_util import rel_error, run_interpreter_checks

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
    monkeypatch.setattr(backend, "_TRITON_OK", False)
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
    rot = cp.asarray(
        torch.linalg.qr(torch.randn(n, 3, 3, dtype=torch.float64))[0].numpy(), dtype=cp.float32
    )
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
    ref = model.project(
        torch.as_tensor(vol, device="cuda"),
        torch.as_tensor(rot, device="cuda"),
        torch.as_tensor(shifts, device="cuda"),
        ctf,
    )
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
        kernels.allocate(
            "op", (1024, 1024, 1024, 2), device=torch.device("cpu"), dtype=torch.float32
        )


# ---------------------------------------------------------------------------------------------
# ForwardModel and the projectors' module functions on the kernel path vs the torch path.
# On the CPU the kernels run through Triton's interpreter, which must be switched on before Triton
# is first imported: the comparisons run in a fresh process (this file as a script with
# --interpreter-checks) and print JSON; the tests assert on it.

PIXEL_SIZE = 2.5
REL_TOL_FLOAT32 = 1e-5
REL_TOL_FLOAT64 = 1e-12
#: name -> (projector, box, particles, dtype, ctf kind, batch size); batch sizes below the
#: particle count exercise the chunk loops of both paths.
FORWARD_CASES = {
    "fourier-13": ("fourier", 13, 3, "float32", "params", 2),
    "fourier-16-ctf-array": ("fourier", 16, 2, "float32", "array", None),
    "fourier-12-float64": ("fourier", 12, 2, "float64", "params", None),
    "real-12": ("real", 12, 3, "float32", "params", 2),
    "real-17": ("real", 17, 2, "float32", "params", None),
}
GPU_FORWARD_CASES = {
    "fourier-128": ("fourier", 128, 16, "float32", "params", 6),
    "fourier-97-ctf-array": ("fourier", 97, 8, "float32", "array", None),
    "fourier-64-float64": ("fourier", 64, 8, "float64", "params", None),
    "real-64": ("real", 64, 8, "float32", "params", 3),
    "real-65": ("real", 65, 5, "float32", "params", None),
}


def _rotations(n: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Random rotations (QR of Gaussian matrices, det +1); the first is the identity."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q = q * torch.linalg.det(q)[:, None, None]
    q[0] = torch.eye(3, dtype=torch.float64)  # samples on grid planes, q_x = 0 edge
    return q.to(dtype)


def _in_mode(mode: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with ``CRYOGRAD_KERNELS=mode``."""
    import os

    old = os.environ.get("CRYOGRAD_KERNELS")
    os.environ["CRYOGRAD_KERNELS"] = mode
    try:
        return fn(*args, **kwargs)
    finally:
        if old is None:
            os.environ.pop("CRYOGRAD_KERNELS")
        else:
            os.environ["CRYOGRAD_KERNELS"] = old


def _counting_kernel_calls(fn, *args):
    """``(fn(*args), number of calls of the Triton entry points that it made)``."""
    from cryograd.projectors.fourier_slice import _triton as kfs
    from cryograd.projectors.real_space import _triton as krs

    count = [0]
    saved = []
    for mod, names in (
        (kfs, ("extract_slices", "insert_slices")),
        (krs, ("project", "backproject")),
    ):
        for name in names:
            original = getattr(mod, name)

            def counted(*a, _original=original, **k):
                count[0] += 1
                return _original(*a, **k)

            saved.append((mod, name, original))
            setattr(mod, name, counted)
    try:
        return fn(*args), count[0]
    finally:
        for mod, name, original in saved:
            setattr(mod, name, original)


def _forward_compare(case: tuple, device: str, kernel_mode: str) -> dict[str, float]:
    """ForwardModel (project, backproject, data_gradient, autograd) and the projector module
    functions in ``kernel_mode`` against ``CRYOGRAD_KERNELS=torch``, plus the kernel path's
    dot-product test."""
    from cryograd.ctf import CTFParams, ctf_2d
    from cryograd.forward import ForwardModel
    from cryograd.projectors import fourier_slice as fs
    from cryograd.projectors import real_space as rs

    projector, box, n, dt, ctf_kind, batch = case
    dtype = getattr(torch, dt)
    g = torch.Generator().manual_seed(box * 10 + n)
    vol = torch.randn(box, box, box, generator=g, dtype=dtype).to(device)
    img = torch.randn(n, box, box, generator=g, dtype=dtype).to(device)
    rot = _rotations(n, g, dtype).to(device)
    shifts = (3.0 * torch.randn(n, 2, generator=g, dtype=dtype)).to(device)
    ctf = CTFParams.create(
        defocus_u_angstrom=torch.linspace(6000.0, 15000.0, n),
        defocus_v_angstrom=torch.linspace(5500.0, 14000.0, n),
        defocus_angle_degrees=torch.linspace(10.0, 300.0, n),
        phase_shift_degrees=torch.linspace(0.0, 30.0, n),
        b_factor=torch.linspace(0.0, 50.0, n),
        dtype=dtype,
    )
    if ctf_kind == "array":
        ctf = ctf_2d(ctf, box, PIXEL_SIZE, device=device, dtype=dtype)
    model = ForwardModel(box, PIXEL_SIZE, projector, batch_size=batch)

    def run_all():
        proj = model.project(vol, rot, shifts, ctf)
        back = model.backproject(img, rot, shifts, ctf)
        grad, loss = model.data_gradient(vol, img, rot, shifts, ctf, return_loss=True)
        v = vol.clone().requires_grad_(True)
        (model.project(v, rot, shifts, ctf) * img).sum().backward()
        mod = fs if projector == "fourier" else rs
        return {
            "project": proj,
            "backproject": back,
            "data_gradient": grad,
            "loss": torch.tensor(loss, dtype=torch.float64),
            "autograd": v.grad,
            "module_project": mod.project(vol, rot),
            "module_backproject": mod.backproject(img, rot),
        }

    ref, torch_calls = _counting_kernel_calls(_in_mode, "torch", run_all)
    got, kernel_calls = _counting_kernel_calls(_in_mode, kernel_mode, run_all)
    res = {k: rel_error(got[k], ref[k]) for k in ref}
    res["kernel_calls_torch_mode"] = torch_calls
    res["kernel_calls"] = kernel_calls
    # <A x, y> = <x, Aᵀ y> on the kernel path (float64 sums)
    lhs = float((got["project"].double() * img.double()).sum())
    rhs = float((vol.double() * got["backproject"].double()).sum())
    res["dot"] = abs(lhs - rhs) / float(got["project"].double().norm() * img.double().norm())
    # the autograd backward is one back-projection of the images
    res["autograd_vs_backproject"] = rel_error(got["autograd"], got["backproject"])

    # Rotations with rows of norm 1 + 4e-4 (within ForwardModel's 1e-3 orthonormality check) put
    # Nyquist samples past q = ±P/2: the kernels clamp as the torch geometry does.
    views = torch.tensor(
        [[[1.0, 0, 0], [0, 0, 1], [0, -1, 0]], [[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]], dtype=dtype
    ).to(device) * (1 + 4e-4)
    ref_p = _in_mode("torch", model.project, vol, views)
    got_p = _in_mode(kernel_mode, model.project, vol, views)
    res["rounded_rotations_project"] = rel_error(got_p, ref_p)
    ref_b = _in_mode("torch", model.backproject, img[:1].expand(2, -1, -1), views)
    got_b = _in_mode(kernel_mode, model.backproject, img[:1].expand(2, -1, -1), views)
    res["rounded_rotations_backproject"] = rel_error(got_b, ref_b)
    return res


FORWARD_KEYS = [
    "project",
    "backproject",
    "data_gradient",
    "loss",
    "autograd",
    "module_project",
    "module_backproject",
    "autograd_vs_backproject",
    "rounded_rotations_project",
    "rounded_rotations_backproject",
]


def _assert_dispatched(res: dict[str, float]) -> None:
    """The kernel mode ran the Triton entry points (at least once per chunk and operation:
    project, backproject, 2 for data_gradient, 2 for autograd, 2 module functions); the torch
    mode none."""
    assert res["kernel_calls_torch_mode"] == 0, res
    assert res["kernel_calls"] >= 8, res


def _forward_tol(dtype: str) -> float:
    return REL_TOL_FLOAT32 if dtype == "float32" else REL_TOL_FLOAT64


def _interpreter_checks() -> dict[str, dict[str, float]]:
    import os

    assert os.environ.get("TRITON_INTERPRET") == "1"
    return {name: _forward_compare(case, "cpu", "triton") for name, case in FORWARD_CASES.items()}


@pytest.fixture(scope="module")
def interpreted_forward() -> dict[str, dict[str, float]]:
    """The comparisons in a fresh process with ``TRITON_INTERPRET=1``; their JSON results."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    return run_interpreter_checks(__file__, kernels_mode=None)


@pytest.mark.parametrize("case", list(FORWARD_CASES))
@pytest.mark.parametrize("what", FORWARD_KEYS)
def test_forward_model_kernel_path_equals_torch_path(interpreted_forward, case, what):
    """CRYOGRAD_KERNELS=triton (interpreted) against CRYOGRAD_KERNELS=torch: ForwardModel
    project / backproject / data_gradient (and its loss) / autograd, with CTF and shifts, and
    the projectors' module-level project / backproject."""
    res = interpreted_forward[case]
    _assert_dispatched(res)
    assert res[what] <= _forward_tol(FORWARD_CASES[case][3]), (what, res)


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_model_kernel_path_is_adjoint(interpreted_forward, case):
    tol = 1e-6 if FORWARD_CASES[case][3] == "float32" else 1e-13
    assert interpreted_forward[case]["dot"] < tol, interpreted_forward[case]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("projector", ["fourier", "real"])
def test_forced_kernels_on_cpu_without_interpreter_is_one_clear_error(monkeypatch, projector):
    from cryograd.forward import ForwardModel

    monkeypatch.setenv("CRYOGRAD_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = ForwardModel(8, 1.0, projector)
    with pytest.raises(CryogradError, match="TRITON_INTERPRET=1"):
        model.project(torch.zeros(8, 8, 8), torch.eye(3)[None])


def test_cpu_default_path_never_imports_triton():
    """auto on the CPU: ForwardModel and the projectors stay on the torch / compiled-loop path."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from cryograd.forward import ForwardModel\n"
        "from cryograd.projectors import fourier_slice as fs, real_space as rs\n"
        "rot = torch.eye(3)[None]\n"
        "for p in ('fourier', 'real'):\n"
        "    m = ForwardModel(8, 1.0, p)\n"
        "    m.data_gradient(torch.ones(8, 8, 8), m.project(torch.ones(8, 8, 8), rot), rot)\n"
        "fs.backproject(fs.project(torch.ones(8, 8, 8), rot), rot)\n"
        "rs.backproject(rs.project(torch.ones(8, 8, 8), rot), rot)\n"
        "print('triton' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CRYOGRAD_KERNELS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"


def test_cpu_default_uses_compiled_slice_loops(monkeypatch):
    """auto on the CPU: the Fourier projector runs the compiled loops when they were built."""
    from cryograd.forward import ForwardModel
    from cryograd.projectors.fourier_slice import _cpu as cpu_kernels

    if not cpu_kernels.available():
        pytest.skip("the compiled CPU slice loops were not built")
    calls = []
    for name in ("extract_slices", "insert_slices"):
        original = getattr(cpu_kernels, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cpu_kernels, name, spy)
    model = ForwardModel(8, 1.0, "fourier")
    rot = torch.eye(3)[None]
    model.backproject(model.project(torch.ones(8, 8, 8), rot), rot)
    assert calls == ["extract_slices", "insert_slices"]
    calls.clear()
    monkeypatch.setenv("CRYOGRAD_KERNELS", "torch")
    model.backproject(model.project(torch.ones(8, 8, 8), rot), rot)
    assert calls == []


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and Triton")
@pytest.mark.parametrize("case", list(GPU_FORWARD_CASES))
def test_gpu_forward_model_kernel_path_equals_torch_path(case):
    """On CUDA the default (auto) path is the kernels: the same comparisons at full size."""
    assert kernels.use_kernels(torch.zeros(1, device="cuda"))
    res = _in_mode("auto", _forward_compare, GPU_FORWARD_CASES[case], "cuda", "auto")
    _assert_dispatched(res)
    tol = _forward_tol(GPU_FORWARD_CASES[case][3])
    for what in FORWARD_KEYS:
        assert res[what] <= tol, (what, res)
    # float32 sums over 128³-voxel volumes: the adjointness holds to rounding, ~1e-7 here
    assert res["dot"] < (1e-5 if tol == REL_TOL_FLOAT32 else 1e-13), res


if __name__ == "__main__" and "--interpreter-checks" in __import__("sys").argv:
    import json

    print(json.dumps(_interpreter_checks()))
