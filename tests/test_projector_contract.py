"""The projector contract, over every projector x backend, and the one backend decision.

Every projector of :data:`cryograd.projectors.PROJECTORS` on every backend (torch; the compiled
CPU loops where built and where the projector has them; Triton through ``TRITON_INTERPRET=1`` in
a child process, on box 16) must

- be adjoint: ``<T C P x, y> = <x, Pᵀ Cᵀ Tᵀ y>`` (float64, CTF and shifts on);
- agree with the torch reference backend (project, backproject, data gradient);
- for the Fourier-slice projector: ``extract`` and ``insert`` (without weights) are transposes,
  and ``insert`` (values and CTF² weights) agrees with the torch reference.

:func:`cryograd.projectors.select_backend` is forced through each value of ``CRYOGRAD_KERNELS``
and each kind of device.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from cryograd.ctf import CTFParams
from cryograd.errors import CryogradError
from cryograd.projectors import PROJECTORS, ImageFilters, backend, make_projector, select_backend

if __name__ == "__main__":  # run as the interpreter child: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests._kernel_util import random_rotations, rel_error, run_interpreter_checks  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
BOX = 16
N = 5
#: float64 throughout: adjointness to rounding, backends equal to rounding
TOL = 1e-10


def _inputs(box: int, n: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(7)
    vol = torch.randn(box, box, box, generator=g, dtype=dtype)
    images = torch.randn(n, box, box, generator=g, dtype=dtype)
    rot = random_rotations(n, g, dtype)
    shifts = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * 4
    ctf = CTFParams(
        defocus_u_angstrom=torch.linspace(9000, 15000, n, dtype=torch.float64),
        defocus_v_angstrom=torch.linspace(8000, 14000, n, dtype=torch.float64),
        defocus_angle_degrees=torch.linspace(0, 90, n, dtype=torch.float64),
        voltage_kv=torch.full((n,), 300.0, dtype=torch.float64),
        spherical_aberration_mm=torch.full((n,), 2.7, dtype=torch.float64),
        amplitude_contrast=torch.full((n,), 0.1, dtype=torch.float64),
        phase_shift_degrees=torch.zeros(n, dtype=torch.float64),
        b_factor=torch.zeros(n, dtype=torch.float64),
        scale=torch.ones(n, dtype=torch.float64),
    )
    filters = ImageFilters(ctf, shifts, 2.0)
    return vol, images, rot, filters


def _in_mode(mode: str, fn, *args, **kwargs):
    old = os.environ.get("CRYOGRAD_KERNELS")
    os.environ["CRYOGRAD_KERNELS"] = mode
    try:
        return fn(*args, **kwargs)
    finally:
        if old is None:
            del os.environ["CRYOGRAD_KERNELS"]
        else:
            os.environ["CRYOGRAD_KERNELS"] = old


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Real inner product ``Re Σ conj(a) b`` in float64."""
    return float((torch.conj(a) * b).real.double().sum())


def _run(name: str, vol, images, rot, filters) -> dict[str, torch.Tensor]:
    """Everything the contract compares, on the backend the current environment selects."""
    proj = make_projector(name, vol.shape[-1], batch_size=2)  # 2: several chunks
    out = {
        "project": proj.project(vol, rot, filters),
        "backproject": proj.backproject(images, rot, filters),
        "gradient": proj.data_gradient(vol, images, rot, filters)[0],
    }
    if name == "fourier":
        ext = proj.steps(vol.device).prepare(vol)
        out["extract"] = proj.extract(ext, rot, filters)
        spectra = torch.fft.rfft2(images)
        acc, w = proj.new_accumulators(vol.device, vol.dtype)
        proj.insert(
            spectra,
            rot,
            acc,
            w,
            ctf=filters.ctf,
            shifts_px=filters.shifts_px,
            pixel_size_angstrom=filters.pixel_size_angstrom,
            premultiplied=torch.tensor([True] + [False] * (len(rot) - 1)),
            sample_weights=0.5,
        )
        out["insert"], out["insert_weights"] = acc, w
        bare = torch.zeros_like(ext)
        proj.insert(
            spectra,
            rot,
            bare,
            ctf=filters.ctf,
            shifts_px=filters.shifts_px,
            pixel_size_angstrom=filters.pixel_size_angstrom,
        )
        out["ext"], out["spectra"], out["insert_bare"] = ext, spectra, bare
    return out


def contract_errors(name: str, mode: str, box: int = BOX) -> dict[str, float]:
    """Relative errors of projector ``name`` on backend ``mode`` against the contract."""
    vol, images, rot, filters = _inputs(box, N, torch.float64)
    got = _in_mode(mode, _run, name, vol, images, rot, filters)
    ref = _in_mode("torch", _run, name, vol, images, rot, filters)
    res = {k: rel_error(got[k], ref[k]) for k in ("project", "backproject", "gradient")}
    lhs, rhs = _dot(got["project"], images), _dot(vol, got["backproject"])
    res["adjoint"] = abs(lhs - rhs) / float(got["project"].norm() * images.norm())
    expected = (
        ref["backproject"]
        - _in_mode("torch", _run, name, vol, ref["project"], rot, filters)["backproject"]
    )
    res["gradient_formula"] = rel_error(got["gradient"], -expected)
    if name == "fourier":
        for k in ("extract", "insert", "insert_weights"):
            res[k] = rel_error(got[k], ref[k])
        lhs = _dot(got["extract"], got["spectra"])
        rhs = _dot(got["ext"], got["insert_bare"])
        res["extract_insert_adjoint"] = abs(lhs - rhs) / float(
            got["extract"].norm() * got["spectra"].norm()
        )
    return res


def _combinations():
    for name in PROJECTORS:
        yield name, "torch"
        if backend.OPERATIONS[PROJECTORS[name].__module__.split(".")[2]] is not None:
            yield name, "cpu"


@pytest.mark.parametrize("name,mode", list(_combinations()))
def test_contract_in_process(name, mode):
    if mode == "cpu" and not backend.cpu_available("fourier_slice"):
        pytest.skip("the compiled CPU loops were not built")
    proj = make_projector(name, BOX)
    assert _in_mode(mode, proj.backend, "cpu") == mode
    res = contract_errors(name, mode)
    assert all(v < TOL for v in res.values()), res


@pytest.fixture(scope="module")
def interpreted():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    return run_interpreter_checks(__file__, kernels_mode="triton")


@pytest.mark.parametrize("name", list(PROJECTORS))
def test_contract_triton_interpreted(interpreted, name):
    res = interpreted[name]
    assert res.pop("backend") == "triton"
    assert all(v < TOL for v in res.values()), res


def test_real_space_has_no_fourier_insertion():
    proj = make_projector("real", 8)
    with pytest.raises(CryogradError, match="real-space projector has no Fourier"):
        proj.insert(torch.zeros(1, 8, 5, dtype=torch.complex64), torch.eye(3)[None], None)
    with pytest.raises(CryogradError, match="real-space projector has no Fourier"):
        proj.extract(torch.zeros(10, dtype=torch.complex64), torch.eye(3)[None])


def test_unknown_projector_is_one_clear_error():
    with pytest.raises(CryogradError, match="unknown projector 'spline'.*'fourier' or 'real'"):
        make_projector("spline", 8)


# ------------------------------------------------------------------ the one backend decision


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("CRYOGRAD_KERNELS", raising=False)
    return monkeypatch


@pytest.mark.parametrize("op", list(backend.OPERATIONS))
def test_torch_forces_the_reference(env, op):
    env.setenv("CRYOGRAD_KERNELS", " Torch ")
    for device in ("cpu", "cuda", "meta"):
        assert select_backend(device, op) == "torch"


def test_auto_follows_device_and_availability(env):
    has_cpu = backend.cpu_available("fourier_slice")
    for value in ("", "auto"):
        env.setenv("CRYOGRAD_KERNELS", value)
        assert select_backend("cpu", "fourier_slice") == ("cpu" if has_cpu else "torch")
        assert select_backend("cpu", "real_space") == "torch"  # no compiled loops
        assert select_backend("meta", "fourier_slice") == "torch"
        expected = "triton" if backend.triton_available() else "torch"
        assert select_backend("cuda", "fourier_slice") == expected
        assert select_backend("cuda:0", "real_space") == expected
    env.setattr(backend, "_TRITON_OK", False)
    assert select_backend("cuda", "real_space") == "torch"
    env.setattr(backend, "cpu_available", lambda op="fourier_slice": False)
    assert select_backend("cpu", "fourier_slice") == "torch"


def test_cpu_forces_compiled_loops_or_says_why(env):
    env.setenv("CRYOGRAD_KERNELS", "cpu")
    if backend.cpu_available("fourier_slice"):
        assert select_backend("cpu", "fourier_slice") == "cpu"
    assert select_backend("cpu", "real_space") == "torch"
    assert select_backend("cuda", "fourier_slice") == "torch"
    env.setattr(backend, "cpu_available", lambda op="fourier_slice": False)
    with pytest.raises(CryogradError, match="CRYOGRAD_KERNELS=cpu.*not built"):
        select_backend("cpu", "fourier_slice")


def test_triton_forces_kernels_or_says_why(env):
    env.setenv("CRYOGRAD_KERNELS", "triton")
    env.setattr(backend, "_TRITON_OK", True)
    for device in ("cpu", "cuda"):
        for op in backend.OPERATIONS:
            assert select_backend(device, op) == "triton"
    env.setattr(backend, "_TRITON_OK", False)
    with pytest.raises(CryogradError, match="CRYOGRAD_KERNELS=triton but Triton cannot"):
        select_backend("cuda", "fourier_slice")


def test_unknown_value_and_operation_are_clear_errors(env):
    env.setenv("CRYOGRAD_KERNELS", "cuda")
    with pytest.raises(CryogradError, match="CRYOGRAD_KERNELS='cuda' is not one of"):
        select_backend("cpu", "fourier_slice")
    env.delenv("CRYOGRAD_KERNELS")
    with pytest.raises(CryogradError, match="unknown projector operation 'spline'"):
        select_backend("cpu", "spline")


def test_only_the_backend_module_reads_the_variable():
    src = Path(__file__).resolve().parents[1] / "src" / "cryograd"
    readers = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if "environ" in (text := p.read_text()) and ("CRYOGRAD_KERNELS" in text or "ENV" in text)
    ]
    assert readers == [os.path.join("projectors", "backend.py")], readers


def test_importing_the_projectors_does_not_import_triton():
    import subprocess

    code = (
        "import sys, torch, cryograd.projectors as p, cryograd.forward\n"
        "m = p.make_projector('fourier', 8)\n"
        "m.backproject(m.project(torch.ones(8, 8, 8), torch.eye(3)[None]), torch.eye(3)[None])\n"
        "print('triton' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "CRYOGRAD_KERNELS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"


def _interpreter_checks() -> dict:
    out = {}
    for name in PROJECTORS:
        res = contract_errors(name, "triton")
        res["backend"] = make_projector(name, BOX).backend("cpu")
        out[name] = res
    return out


if __name__ == "__main__" and "--interpreter-checks" in sys.argv:
    import json

    print(json.dumps(_interpreter_checks()))
