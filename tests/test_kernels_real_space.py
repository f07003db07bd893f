"""Triton real-space projector and back-projector against the torch reference.

On the CPU the kernels run through Triton's interpreter. ``TRITON_INTERPRET=1`` must be set before
Triton defines a kernel, so the comparisons run in a fresh Python process (this file run as a
script, ``--interpreter-checks``) and report their numbers as JSON; the tests below assert on them.
This keeps the interpreter away from any Triton already imported by the test session. On a GPU the
``gpu``-marked tests compare the compiled kernels with the torch path at full size in-process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
import torch

from tests._kernel_util import random_rotations, rel_error, run_interpreter_checks

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

# (box, particles, dtype) for the interpreter: odd and even boxes, one particle (a specialisation
# Triton would make), and a count that is not a multiple of the particles per program.
INTERPRETER_CASES = [(16, 5, "float32"), (17, 3, "float32"), (16, 1, "float32"), (16, 3, "float64")]
REL_TOL_FLOAT32 = 1e-5


def _compare(box: int, n: int, dtype: torch.dtype, device: str) -> dict[str, float]:
    """Kernel vs torch reference and the kernel pair's dot-product test, on one device."""
    from cryograd.projectors import real_space as reference
    from cryograd.projectors.real_space import _triton as kernel

    g = torch.Generator().manual_seed(box * 100 + n)
    volume = torch.randn(box, box, box, generator=g, dtype=dtype).to(device)
    volume[0, 0, :4] = 0.0  # zero voxels take the kernel's skip path
    rotations = random_rotations(n, g, dtype).to(device)
    if n > 1:
        rotations[0] = torch.eye(3, dtype=dtype)  # voxels land exactly on pixel edges
    images = torch.randn(n, box, box, generator=g, dtype=dtype).to(device)

    old = os.environ.get("CRYOGRAD_KERNELS")
    os.environ["CRYOGRAD_KERNELS"] = "torch"
    try:
        ref_proj = reference.project(volume, rotations)
        ref_back = reference.backproject(images, rotations)
    finally:
        if old is None:
            os.environ.pop("CRYOGRAD_KERNELS")
        else:
            os.environ["CRYOGRAD_KERNELS"] = old
    proj = kernel.project(volume, rotations)
    back = kernel.backproject(images, rotations)
    lhs = float((proj.double() * images.double()).sum())
    rhs = float((volume.double() * back.double()).sum())
    return {
        "project_rel": rel_error(proj, ref_proj),
        "backproject_rel": rel_error(back, ref_back),
        "dot": abs(lhs - rhs) / float(proj.double().norm() * images.double().norm()),
        "project_shape_ok": tuple(proj.shape) == (n, box, box) and proj.dtype == dtype,
        "backproject_shape_ok": tuple(back.shape) == (box,) * 3 and back.dtype == dtype,
    }


def _interpreter_checks() -> dict[str, dict[str, float]]:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    return {
        f"{box}-{n}-{dt}": _compare(box, n, getattr(torch, dt), "cpu")
        for box, n, dt in INTERPRETER_CASES
    }


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict[str, float]]:
    """Run the comparisons in a fresh interpreter-mode process; its JSON results."""
    return run_interpreter_checks(__file__)


@pytest.mark.parametrize("case", [f"{b}-{n}-{d}" for b, n, d in INTERPRETER_CASES])
def test_interpreted_project_matches_torch(interpreted, case):
    res = interpreted[case]
    tol = REL_TOL_FLOAT32 if case.endswith("float32") else 1e-12
    assert res["project_shape_ok"]
    assert res["project_rel"] <= tol, res


@pytest.mark.parametrize("case", [f"{b}-{n}-{d}" for b, n, d in INTERPRETER_CASES])
def test_interpreted_backproject_matches_torch(interpreted, case):
    res = interpreted[case]
    tol = REL_TOL_FLOAT32 if case.endswith("float32") else 1e-12
    assert res["backproject_shape_ok"]
    assert res["backproject_rel"] <= tol, res


@pytest.mark.parametrize("case", [f"{b}-{n}-{d}" for b, n, d in INTERPRETER_CASES])
def test_interpreted_kernels_are_adjoint(interpreted, case):
    # <P x, y> = <x, Pᵀ y> for the kernel pair itself.
    tol = 1e-6 if case.endswith("float32") else 1e-13
    assert interpreted[case]["dot"] < tol, interpreted[case]


def test_bad_shapes_and_dtypes_raise_cryograd_error():
    from cryograd.errors import CryogradError
    from cryograd.projectors.real_space import _triton as kernel

    rotations = torch.eye(3).expand(2, 3, 3)
    with pytest.raises(CryogradError, match="dtype"):
        kernel.project(torch.zeros(8, 8, 8, dtype=torch.int32), rotations)
    with pytest.raises(CryogradError, match="rotations"):
        kernel.backproject(torch.zeros(3, 8, 8), rotations)
    with pytest.raises(CryogradError, match="cubic"):
        kernel.project(torch.zeros(8, 8, 4), rotations)


@pytest.mark.skipif(HAS_CUDA, reason="CPU-only check")
def test_cpu_tensor_without_interpreter_is_a_clear_error(monkeypatch):
    from cryograd.errors import CryogradError
    from cryograd.projectors.real_space import _triton as kernel

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(CryogradError, match="CRYOGRAD_KERNELS=torch"):
        kernel.project(torch.zeros(8, 8, 8), torch.eye(3)[None])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("box,n", [(64, 16), (128, 8), (97, 5)])
def test_gpu_kernels_match_torch(box, n):
    res = _compare(box, n, torch.float32, "cuda")
    assert res["project_rel"] <= REL_TOL_FLOAT32, res
    assert res["backproject_rel"] <= REL_TOL_FLOAT32, res
    assert res["dot"] < 1e-6, res


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_kernels_float64_adjoint():
    res = _compare(64, 4, torch.float64, "cuda")
    assert res["project_rel"] <= 1e-12 and res["backproject_rel"] <= 1e-12, res
    assert res["dot"] < 1e-13, res


if __name__ == "__main__" and "--interpreter-checks" in sys.argv:
    print(json.dumps(_interpreter_checks()))


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU the kernels are compiled and run by the gpu tests")
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernels_compile_for_hopper(dtype):
    """Compile the real (not interpreted) kernels for sm_90 with Triton's bundled ptxas, no GPU."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process interprets Triton kernels")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from cryograd.projectors.real_space import _triton as kernel

    ptr = f"*{dtype}"
    target = GPUTarget("cuda", 90, 32)
    sig = {"rot_ptr": ptr, "out_ptr": ptr, "n_particles": "i32", "D": "i32"}
    proj = compile(
        ASTSource(kernel._project_kernel, {"vol_ptr": ptr, **sig}, {"BLOCK": 256, "PARTICLES": 4}),
        target=target,
    )
    assert f"red.global.gpu.relaxed.add.{dtype.replace('fp', 'f')}" in proj.asm["ptx"]
    back = compile(
        ASTSource(kernel._backproject_kernel, {"img_ptr": ptr, **sig}, {"BLOCK": 256}),
        target=target,
    )
    assert "red." not in back.asm["ptx"] and "atom." not in back.asm["ptx"]  # a pure gather
