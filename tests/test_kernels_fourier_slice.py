"""Triton Fourier-slice extraction/insertion (CTF and shift fused) against the torch reference.

As in ``test_kernels_real_space.py``, the CPU comparisons run the kernels through Triton's
interpreter in a fresh process (this file run as a script with ``--interpreter-checks``, with
``TRITON_INTERPRET=1`` set before Triton is imported) and the tests assert on the JSON it prints.
The reference is the torch path: ``extract_slices(volume_spectrum, slice_geometry)`` times the
forward model's filter ``ramp(-origin) · CTF`` (``ctf_2d``, ``phase_ramp``), and its transpose.
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

INTERPRETER_CASES = [(16, 3, "float32"), (17, 2, "float32"), (16, 1, "float32"), (16, 3, "float64")]
REL_TOL_FLOAT32 = 1e-5
PIXEL_SIZE = 3.5


def _inputs(box: int, n: int, dtype: torch.dtype, device: str):
    from cryograd.ctf import CTFParams

    g = torch.Generator().manual_seed(box * 10 + n)
    volume = torch.randn(box, box, box, generator=g, dtype=dtype)
    rotations = random_rotations(n, g, dtype)
    if n > 1:
        rotations[0] = torch.eye(3, dtype=dtype)  # samples exactly on grid planes, q_x = 0 edge
    shifts = 3.0 * torch.randn(n, 2, generator=g, dtype=dtype)
    ctf = CTFParams.create(
        defocus_u_angstrom=torch.linspace(6000.0, 15000.0, n),
        defocus_v_angstrom=torch.linspace(5500.0, 14000.0, n),
        defocus_angle_degrees=torch.linspace(10.0, 300.0, n),
        amplitude_contrast=0.07,
        phase_shift_degrees=torch.linspace(0.0, 30.0, n),
        b_factor=torch.linspace(0.0, 50.0, n),
        scale=torch.linspace(1.0, 0.8, n),
        dtype=dtype,
    )
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    slices = torch.randn(n, box, box // 2 + 1, generator=g, dtype=cdtype)
    images = torch.randn(n, box, box, generator=g, dtype=dtype)
    return (
        volume.to(device),
        rotations.to(device),
        shifts.to(device),
        ctf.to(device=device),
        slices.to(device),
        images.to(device),
    )


def _compare(box: int, n: int, dtype: torch.dtype, device: str) -> dict[str, float]:
    """Every kernel entry point against the torch reference, plus dot-product tests."""
    from cryograd.ctf import ctf_2d
    from cryograd.projectors import fourier_slice as fs
    from cryograd.projectors.fourier_slice import _triton as kernel
    from cryograd.shift import phase_ramp

    old = os.environ.get("CRYOGRAD_KERNELS")
    os.environ["CRYOGRAD_KERNELS"] = "torch"  # the reference functions must not dispatch
    try:
        volume, rot, shifts, ctf, slices, images = _inputs(box, n, dtype, device)
        p = fs.padded_size(box, 2.0)
        spec = fs.volume_spectrum(volume, p)
        ext = fs.ExtendedSpectrum.from_spectrum(spec)
        geom = fs.slice_geometry(rot, box, p)
        ctf_values = ctf_2d(ctf, box, PIXEL_SIZE, device=device, dtype=dtype)
        filt = ctf_values * phase_ramp(-shifts, box, dtype=dtype)
        plain = fs.extract_slices(spec, geom)
        ref_extract = plain * filt
        ref_insert = fs.insert_slices(slices * torch.conj(filt), geom)
        ref_weights = fs.insert_slices((ctf_values**2).to(slices.dtype), geom).real
        premult = torch.arange(n, device=device) % 2 == 0
        pre_filt = torch.where(premult[:, None, None], filt / ctf_values, filt)
        ref_insert_pre = fs.insert_slices(slices * torch.conj(pre_filt), geom)
        pixel_sizes = torch.linspace(PIXEL_SIZE, 1.3 * PIXEL_SIZE, n, dtype=torch.float64)
        ctf_pp = torch.cat(
            [
                ctf_2d(ctf[i : i + 1], box, float(pixel_sizes[i]), device=device, dtype=dtype)
                for i in range(n)
            ]
        )
        filt_pp = ctf_pp * phase_ramp(-shifts, box, dtype=dtype)
        sample_w = torch.rand(
            box, box // 2 + 1, generator=torch.Generator().manual_seed(3), dtype=dtype
        ).to(device)
        ref_insert_sw = fs.insert_slices(slices * torch.conj(filt_pp) * sample_w, geom)
        ref_weights_sw = fs.insert_slices((ctf_pp**2 * sample_w).to(slices.dtype), geom).real
        p_15 = fs.padded_size(box, 1.5)
        spec_15 = fs.volume_spectrum(volume, p_15)
        geom_15 = fs.slice_geometry(rot, box, p_15)
        ref_extract_15 = fs.extract_slices(spec_15, geom_15)
        ref_insert_15 = fs.insert_slices(slices, geom_15)
        ref_project = fs.project(volume, rot)
        ref_backproject = fs.backproject(images, rot)
        # float64 truth for the float32 accuracy check
        spec64 = fs.volume_spectrum(volume.double(), p)
        geom64 = fs.slice_geometry(rot.double(), box, p)
        filt64 = ctf_2d(
            ctf.to(dtype=torch.float64), box, PIXEL_SIZE, device=device, dtype=torch.float64
        ) * phase_ramp(-shifts.double(), box)
        truth_extract = fs.extract_slices(spec64, geom64) * filt64
    finally:
        if old is None:
            os.environ.pop("CRYOGRAD_KERNELS")
        else:
            os.environ["CRYOGRAD_KERNELS"] = old

    kw = {"ctf": ctf, "shifts_px": shifts, "pixel_size_angstrom": PIXEL_SIZE}
    res: dict[str, float] = {}
    out = kernel.extract_slices(spec, rot, box, **kw)
    res["extract"] = rel_error(out, ref_extract)
    res["extract_vs_float64"] = rel_error(out.to(truth_extract.dtype), truth_extract)
    res["extract_extended"] = rel_error(kernel.extract_slices(ext, rot, box, **kw), ref_extract)
    res["extract_ctf_array"] = rel_error(
        kernel.extract_slices(spec, rot, box, ctf=ctf_values, shifts_px=shifts), ref_extract
    )
    res["extract_plain"] = rel_error(kernel.extract_slices(spec, rot, box), plain)
    res["extract_shape_ok"] = tuple(out.shape) == (n, box, box // 2 + 1) and out.dtype == spec.dtype

    acc = torch.zeros_like(spec)
    wgt = torch.zeros(spec.shape, device=device, dtype=dtype)
    kernel.insert_slices(slices, rot, acc, weights=wgt, **kw)
    res["insert"] = rel_error(acc, ref_insert)
    res["insert_weights"] = rel_error(wgt, ref_weights)
    acc_x = fs.ExtendedSpectrum.zeros(p, device=device, dtype=spec.dtype)
    wgt_x = torch.zeros(acc_x.shape, device=device, dtype=dtype)
    kernel.insert_slices(slices, rot, acc_x, weights=wgt_x, **kw)
    res["insert_extended"] = rel_error(fs.ExtendedSpectrum.fold(acc_x, p), ref_insert)
    res["insert_extended_weights"] = rel_error(fs.ExtendedSpectrum.fold(wgt_x, p), ref_weights)
    acc_p = torch.zeros_like(spec)
    kernel.insert_slices(slices, rot, acc_p, premultiplied=premult, **kw)
    res["insert_premultiplied"] = rel_error(acc_p, ref_insert_pre)
    packed = kernel.packed_accumulator(p, device=device, dtype=dtype)
    kernel.insert_slices(slices, rot, packed, **kw)
    packed_values, packed_weights = kernel.unpack_accumulator(packed)
    res["insert_packed"] = rel_error(packed_values, ref_insert)
    res["insert_packed_weights"] = rel_error(packed_weights, ref_weights)
    # direct-reconstruction style: shared per-sample factors, per-particle pixel sizes
    acc_s = torch.zeros_like(spec)
    wgt_s = torch.zeros(spec.shape, device=device, dtype=dtype)
    kernel.insert_slices(
        slices,
        rot,
        acc_s,
        weights=wgt_s,
        ctf=ctf,
        shifts_px=shifts,
        pixel_size_angstrom=pixel_sizes,
        sample_weights=sample_w,
    )
    res["insert_sample_weights"] = rel_error(acc_s, ref_insert_sw)
    res["insert_sample_weights_w"] = rel_error(wgt_s, ref_weights_sw)
    # another padding: P / D not an integer
    res["extract_pad_1.5"] = rel_error(kernel.extract_slices(spec_15, rot, box), ref_extract_15)
    acc_15 = torch.zeros_like(spec_15)
    kernel.insert_slices(slices, rot, acc_15)
    res["insert_pad_1.5"] = rel_error(acc_15, ref_insert_15)
    # <E x, y> = <x, Eᵀ y> in the real inner product Re Σ conj(a) b, kernels only
    lhs = float((torch.conj(out) * slices).real.double().sum())
    rhs = float((torch.conj(spec) * acc).real.double().sum())
    norm = float(out.abs().double().norm() * slices.abs().double().norm())
    res["dot_slices"] = abs(lhs - rhs) / norm
    proj = kernel.project(volume, rot)
    back = kernel.backproject(images, rot)
    res["project"] = rel_error(proj, ref_project)
    res["backproject"] = rel_error(back, ref_backproject)
    lhs = float((proj.double() * images.double()).sum())
    rhs = float((volume.double() * back.double()).sum())
    res["dot_project"] = abs(lhs - rhs) / float(proj.double().norm() * images.double().norm())
    return res


#: Axis-aligned views: Nyquist samples land exactly on q = ±P/2 (as in
#: test_projectors_fourier_slice.py::test_samples_rounded_past_nyquist_stay_on_grid).
_AXIS_VIEWS = [
    [[1.0, 0, 0], [0, 1, 0], [0, 0, 1]],
    [[1.0, 0, 0], [0, 0, 1], [0, -1, 0]],  # -90° about x: ky = -D/2 lands on qz = -P/2
    [[0.0, 1, 0], [0, 0, 1], [1, 0, 0]],
]
#: Row norms 1 + a few ulp (rotations read from files), and 1 + 1e-3 (the most ForwardModel
#: accepts): both put Nyquist samples past |q| = P/2.
_EXCESS = {"float64": (4e-16, 1e-3), "float32": (2e-7, 1e-3)}


def _guarded(n_elements: int, guard: int, fill: complex, dtype: torch.dtype):
    """A ``fill``-ed buffer and the contiguous view of ``n_elements`` in its middle."""
    big = torch.full((n_elements + 2 * guard,), fill, dtype=dtype)
    return big, big[guard : guard + n_elements]


def _nyquist_checks(box: int, dtype: torch.dtype) -> dict[str, float]:
    """Kernels with rotations rounded past orthonormal (Nyquist samples at ``-P/2 - eps``).

    The spectrum and accumulator sit inside guard zones (NaN for extraction, zero for insertion)
    so that any access off the grid shows up; the results must equal the torch reference with
    the same rotations (whose ``slice_geometry`` clamps ``q`` to the Nyquist bounding box), and
    for the ulp-sized excess also the result of the exact rotations.
    """
    from cryograd.projectors import fourier_slice as fs
    from cryograd.projectors.fourier_slice import _triton as kernel

    assert os.environ.get("CRYOGRAD_KERNELS") == "torch"  # the reference must not dispatch
    g = torch.Generator().manual_seed(7)
    p = fs.padded_size(box, 2.0)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    exact = torch.tensor(_AXIS_VIEWS, dtype=dtype)
    volume = torch.randn(box, box, box, generator=g, dtype=dtype)
    slices = torch.randn(len(exact), box, box // 2 + 1, generator=g, dtype=cdtype)
    spec = fs.volume_spectrum(volume, p)
    ext = fs.ExtendedSpectrum.from_spectrum(spec)
    guard = 2 * ext.numel() // (p + 2)  # two z planes of the extended layout
    nan = complex(float("nan"), float("nan"))
    res: dict[str, float] = {}
    for tag, excess in zip(("ulp", "1e-3"), _EXCESS[str(dtype).split(".")[-1]]):
        rot = exact * (1 + excess)
        geom = fs.slice_geometry(rot, box, p)
        ref_extract = fs.extract_slices(spec, geom)
        ref_insert = fs.insert_slices(slices, geom)
        for layout, source in (("plain", spec), ("extended", ext)):
            big, view = _guarded(source.numel(), guard, nan, cdtype)
            view.copy_(source.reshape(-1))
            got = kernel.extract_slices(view.view(source.shape), rot, box)
            res[f"{tag}-{layout}-extract_finite"] = float(
                torch.isfinite(torch.view_as_real(got)).all()
            )
            res[f"{tag}-{layout}-extract"] = rel_error(got, ref_extract)
            if tag == "ulp":
                res[f"{tag}-{layout}-extract_vs_exact"] = rel_error(
                    got, kernel.extract_slices(source, exact, box)
                )
            big, view = _guarded(source.numel(), guard, 0j, cdtype)
            acc = view.view(source.shape)
            kernel.insert_slices(slices, rot, acc)
            outside = torch.cat([big[:guard], big[guard + source.numel() :]])
            res[f"{tag}-{layout}-insert_guard"] = float(outside.abs().max())
            folded = acc if layout == "plain" else fs.ExtendedSpectrum.fold(acc, p)
            res[f"{tag}-{layout}-insert"] = rel_error(folded, ref_insert)
    return res


def _interpreter_checks() -> dict[str, dict[str, float]]:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    out = {
        f"{box}-{n}-{dt}": _compare(box, n, getattr(torch, dt), "cpu")
        for box, n, dt in INTERPRETER_CASES
    }
    for dt in ("float32", "float64"):
        out[f"nyquist-{dt}"] = _nyquist_checks(16, getattr(torch, dt))
    return out


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict[str, float]]:
    """Run the comparisons in a fresh interpreter-mode process; its JSON results."""
    return run_interpreter_checks(__file__)


CASES = [f"{b}-{n}-{d}" for b, n, d in INTERPRETER_CASES]
COMPARISONS = [
    "extract",
    "extract_extended",
    "extract_ctf_array",
    "extract_plain",
    "insert",
    "insert_weights",
    "insert_extended",
    "insert_extended_weights",
    "insert_premultiplied",
    "insert_packed",
    "insert_packed_weights",
    "extract_pad_1.5",
    "insert_pad_1.5",
    "insert_sample_weights",
    "insert_sample_weights_w",
    "project",
    "backproject",
]


def _tol(case: str) -> float:
    return REL_TOL_FLOAT32 if case.endswith("float32") else 1e-12


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("what", COMPARISONS)
def test_interpreted_kernels_match_torch(interpreted, case, what):
    assert interpreted[case][what] <= _tol(case), (what, interpreted[case])


@pytest.mark.parametrize("case", CASES)
def test_interpreted_output_shapes(interpreted, case):
    assert interpreted[case]["extract_shape_ok"]


@pytest.mark.parametrize("case", CASES)
def test_interpreted_fused_ctf_is_accurate(interpreted, case):
    # The in-kernel CTF against the float64 torch path: float32 rounding only.
    assert interpreted[case]["extract_vs_float64"] <= _tol(case), interpreted[case]


@pytest.mark.parametrize("case", CASES)
def test_interpreted_kernels_are_adjoint(interpreted, case):
    tol = 1e-6 if case.endswith("float32") else 1e-13
    assert interpreted[case]["dot_slices"] < tol, interpreted[case]
    assert interpreted[case]["dot_project"] < tol, interpreted[case]


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_interpreted_samples_rounded_past_nyquist_stay_on_grid(interpreted, dt):
    """Rotations a hair (or 1e-3) past orthonormal: no access off the grid, in either layout, and
    the same result as the torch reference, which clamps ``q`` to the Nyquist bounding box."""
    res = interpreted[f"nyquist-{dt}"]
    tol = _tol(dt)
    for tag in ("ulp", "1e-3"):
        for layout in ("plain", "extended"):
            key = f"{tag}-{layout}"
            assert res[f"{key}-extract_finite"] == 1.0, res  # no NaN guard was read
            assert res[f"{key}-insert_guard"] == 0.0, res  # nothing written outside
            assert res[f"{key}-extract"] <= tol, (key, res)
            assert res[f"{key}-insert"] <= tol, (key, res)
        assert res[f"ulp-{layout}-extract_vs_exact"] <= tol, res


def test_ctf_coefficients_reproduce_relion_ctf():
    """The kernels' CTF rewrite (no atan2) equals :func:`ctf_2d` in float64 (no Triton needed)."""
    from cryograd.ctf import ctf_2d
    from cryograd.fourier import frequency_grid_2d
    from cryograd.projectors.fourier_slice._triton import ctf_coefficients

    _, _, _, ctf, _, _ = _inputs(20, 4, torch.float64, "cpu")
    coef = ctf_coefficients(ctf, 20, PIXEL_SIZE)
    kx, ky = frequency_grid_2d(20, dtype=torch.float64)
    c_mean, c_cos, c_sin, c4, c0, cb, scale = (x[:, None, None] for x in coef.unbind(1))
    k2 = kx**2 + ky**2
    gamma = c4 * k2**2 - (c_mean * k2 + c_cos * (kx**2 - ky**2) + c_sin * 2 * kx * ky) - c0
    mine = -torch.sin(gamma) * torch.exp(-cb * k2) * scale
    torch.testing.assert_close(
        mine, ctf_2d(ctf, 20, PIXEL_SIZE, dtype=torch.float64), rtol=0, atol=1e-12
    )
    # one pixel size per particle
    px = torch.tensor([1.0, 2.0, 3.0, 4.5], dtype=torch.float64)
    coef = ctf_coefficients(ctf, 20, px)
    for i in range(4):
        c_mean, c_cos, c_sin, c4, c0, cb, scale = coef[i]
        gamma = c4 * k2**2 - (c_mean * k2 + c_cos * (kx**2 - ky**2) + c_sin * 2 * kx * ky) - c0
        mine = -torch.sin(gamma) * torch.exp(-cb * k2) * scale
        ref = ctf_2d(ctf[i : i + 1], 20, float(px[i]), dtype=torch.float64)[0]
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-12)


def test_mismatched_inputs_raise_cryograd_error():
    from cryograd.errors import CryogradError
    from cryograd.projectors.fourier_slice import _triton as kernel

    rot = torch.eye(3)[None].repeat(2, 1, 1)
    slices = torch.zeros(2, 8, 5, dtype=torch.complex64)
    with pytest.raises(CryogradError, match="dtype mismatch"):
        kernel.insert_slices(slices, rot, torch.zeros(16, 16, 9, dtype=torch.complex128))
    with pytest.raises(CryogradError, match="device mismatch"):
        kernel.insert_slices(
            slices, rot, torch.zeros(16, 16, 9, dtype=torch.complex64, device="meta")
        )
    acc = torch.zeros(16, 16, 9, dtype=torch.complex64)
    with pytest.raises(CryogradError, match="weights"):
        kernel.insert_slices(slices, rot, acc, weights=torch.zeros(16, 16, 8))
    with pytest.raises(CryogradError, match="dtype mismatch"):
        kernel.insert_slices(slices, rot, acc, weights=torch.zeros(16, 16, 9, dtype=torch.float64))
    with pytest.raises(CryogradError, match="contiguous"):
        kernel.insert_slices(slices, rot, torch.zeros(16, 16, 18, dtype=torch.complex64)[..., ::2])
    with pytest.raises(CryogradError, match="rotations"):
        kernel.insert_slices(slices, rot[:1], acc)
    packed = kernel.packed_accumulator(16)
    with pytest.raises(CryogradError, match="holds the weights"):
        kernel.insert_slices(slices, rot, packed, weights=torch.zeros(16, 16, 9, 4))
    with pytest.raises(CryogradError, match="complex"):
        kernel.extract_slices(torch.zeros(16, 16, 9), rot, 8)
    with pytest.raises(CryogradError, match="sample_weights"):
        kernel.insert_slices(slices, rot, acc, sample_weights=torch.ones(8, 8))
    with pytest.raises(CryogradError, match="pixel_size_angstrom"):
        _, _, _, ctf, _, _ = _inputs(8, 2, torch.float32, "cpu")
        kernel.extract_slices(acc, rot, 8, ctf=ctf)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("box,n", [(64, 32), (128, 8), (97, 4)])
def test_gpu_kernels_match_torch(box, n):
    res = _compare(box, n, torch.float32, "cuda")
    for what in COMPARISONS + ["extract_vs_float64"]:
        assert res[what] <= REL_TOL_FLOAT32, (what, res)
    assert res["dot_slices"] < 1e-6 and res["dot_project"] < 1e-6, res


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_kernels_float64():
    res = _compare(64, 4, torch.float64, "cuda")
    for what in COMPARISONS:
        assert res[what] <= 1e-12, (what, res)
    assert res["dot_slices"] < 1e-13 and res["dot_project"] < 1e-13, res


if __name__ == "__main__" and "--interpreter-checks" in sys.argv:
    print(json.dumps(_interpreter_checks()))


def _flag_bits(kernel, named: dict) -> int:
    """The kernels' FLAGS bit field from named switches (CTF_MODE, HAS_SHIFT, ...)."""
    bits = {
        "HAS_SHIFT": kernel._SHIFT,
        "HAS_WEIGHTS": kernel._WEIGHTS,
        "HAS_PREMULT": kernel._PREMULT,
        "HAS_SAMPLE_W": kernel._SAMPLE_W,
        "EXTENDED": kernel._EXTENDED,
        "PACKED": kernel._PACKED,
        "VEC_ATOMICS": kernel._VEC,
    }
    value = int(named.get("CTF_MODE", 0))
    for name, bit in bits.items():
        value |= bit if named.get(name) else 0
    return value


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU the kernels are compiled and run by the gpu tests")
@pytest.mark.parametrize(
    "kind,dtype,flags",
    [
        ("extract", "fp32", {"CTF_MODE": 1, "HAS_SHIFT": True, "EXTENDED": False}),
        ("extract", "fp64", {"CTF_MODE": 2, "HAS_SHIFT": True, "EXTENDED": True}),
        ("insert", "fp32", {"PACKED": True, "VEC_ATOMICS": True, "EXTENDED": False}),
        ("insert", "fp32", {"PACKED": False, "VEC_ATOMICS": True, "EXTENDED": True}),
        ("insert", "fp64", {"PACKED": False, "VEC_ATOMICS": False, "EXTENDED": False}),
    ],
)
def test_kernels_compile_for_hopper(kind, dtype, flags):
    """Compile the real kernels (vector reductions included) for sm_90 with the bundled ptxas."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process interprets Triton kernels")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from cryograd.projectors.fourier_slice import _triton as kernel

    ptr = f"*{dtype}"
    common = {"rot_ptr": ptr, "ctf_ptr": ptr, "shift_ptr": ptr}
    sizes = {"D": "i32", "P": "i32"}
    if kind == "extract":
        sig = {"spec_ptr": ptr, **common, "out_ptr": ptr, **sizes}
        fn, named = kernel._extract_kernel, flags
    else:
        sig = {
            "slice_ptr": ptr,
            **common,
            "premult_ptr": "*i8",
            "sw_ptr": ptr,
            "acc_ptr": ptr,
            "wgt_ptr": ptr,
            **sizes,
        }
        named = {
            "CTF_MODE": 1,
            "HAS_SHIFT": True,
            "HAS_WEIGHTS": not flags["PACKED"],
            "HAS_PREMULT": True,
            "HAS_SAMPLE_W": True,
            **flags,
        }
        fn = kernel._insert_kernel
    consts = {"FLAGS": _flag_bits(kernel, named), "BLOCK": 256}
    compiled = compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32))
    ptx = compiled.asm["ptx"]
    if kind == "insert" and flags["VEC_ATOMICS"]:
        vec = "v4" if flags["PACKED"] else "v2"
        assert f"red.relaxed.gpu.global.add.{vec}.f32" in ptx
    if kind == "extract":
        assert "red." not in ptx and "atom." not in ptx


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_vector_reductions_match_scalar_atomics(monkeypatch):
    from cryograd.projectors.fourier_slice import _triton as kernel

    box, n = 128, 16
    _, rot, shifts, ctf, slices, _ = _inputs(box, n, torch.float32, "cuda")
    kw = {"ctf": ctf, "shifts_px": shifts, "pixel_size_angstrom": PIXEL_SIZE}
    p = 2 * box
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("CRYOGRAD_VECTOR_ATOMICS", flag)
        acc = torch.zeros((p, p, p // 2 + 1), device="cuda", dtype=torch.complex64)
        wgt = torch.zeros(acc.shape, device="cuda")
        kernel.insert_slices(slices, rot, acc, weights=wgt, **kw)
        packed = kernel.packed_accumulator(p, device="cuda")
        kernel.insert_slices(slices, rot, packed, **kw)
        results.append((acc, wgt, *kernel.unpack_accumulator(packed)))
    for vec, scalar in zip(*results):
        assert rel_error(vec, scalar) <= REL_TOL_FLOAT32
