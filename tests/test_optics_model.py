"""RELION's observation model in the forward model, the insertion and the solvers.

References are written here from RELION's formulas, independently of :mod:`cryograd.optics`:

- the beam-tilt phase ``−π·20000·Cs·λ²·|s|²·(s·t)`` (``TiltHelper::insertTilt`` summed through the
  coma terms of ``Zernike::Z``), the trefoil term ``Z(−3, 3) = ρ³ sin 3θ`` and the 4-fold
  astigmatism ``Z(4, 4) = ρ⁴ cos 4θ`` (``Zernike.cpp``), all at the magnified frequency
  ``s = M k / (D p)`` (``ObservationModel::getPhaseCorrection``, ``getGammaOffset``);
- the CTF of ``CTF::getCTF`` with its three switches, as a scalar loop;
- the projection of a Gaussian blob, whose Fourier transform is known in closed form, sampled at
  ``s_g Aᵀ (M k, 0)`` (``(s⁻¹ M₃⁻¹ A)⁻¹``, ``applyScaleDifference(applyAnisoMag(A))``);
- the adjoint (dot-product) identity of the forward model with optics;
- invariance: a unit-modulus odd factor applied to a set's images and recorded in its optics
  must leave the reconstruction unchanged (RELION's own two maps agree to 0.9993).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryograd.ctf import CTFParams, CtfSwitches, ctf_from_frequencies
from cryograd.forward import ForwardModel
from cryograd.fourier import rfft2_centered
from cryograd.optics import GroupAberrations
from cryograd.optics.particles import ParticleOptics
from cryograd.particle_set import OpticsGroup, ParticleSet
from cryograd.projectors.fourier_slice import _cpu as cpu
from cryograd.projectors.fourier_slice.projector import FourierSliceProjector
from cryograd.solvers.direct import wiener_reconstruct
from cryograd.solvers.insertion import insert_particles
from cryograd.validation import fsc

KV, CS = 300.0, 2.7
TILT = (3.0, -2.0)  # mrad
TREFOIL = 40.0  # rad · Å³ on Z(-3, 3) (odd index 2)
FOURFOLD = 800.0  # rad · Å⁴ on Z(4, 4) (even index 8)
MAG = (1.02, 0.03, -0.02, 0.985)


def _wavelength(kv: float = KV) -> float:
    v = kv * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


def _rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[torch.linalg.det(q) < 0, :, 0] *= -1
    return q


def _extra(tilt=TILT, trefoil=TREFOIL, fourfold=FOURFOLD, mag=MAG) -> dict:
    odd = [0.0] * 6
    odd[2] = trefoil
    even = [0.0] * 9
    even[8] = fourfold
    out = {
        "rlnBeamTiltX": tilt[0],
        "rlnBeamTiltY": tilt[1],
        "rlnOddZernike": "[" + ",".join(map(str, odd)) + "]",
        "rlnEvenZernike": "[" + ",".join(map(str, even)) + "]",
    }
    if mag is not None:
        out.update(zip(("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11"), mag))
    return out


def _odd_phase(sx, sy, tilt=TILT, trefoil=TREFOIL):
    """RELION's odd phase at specimen frequencies (1/Å): tilt coma plus trefoil Z(-3,3)."""
    lam = _wavelength()
    s2 = sx * sx + sy * sy
    tilt_phase = -math.pi * 20000.0 * CS * lam * lam * s2 * (tilt[0] * sx + tilt[1] * sy)
    theta = torch.atan2(sy, sx)
    return tilt_phase + trefoil * s2**1.5 * torch.sin(3 * theta)


def _even_offset(sx, sy, fourfold=FOURFOLD):
    theta = torch.atan2(sy, sx)
    return fourfold * (sx * sx + sy * sy) ** 2 * torch.cos(4 * theta)


def _relion_ctf(sx, sy, dfu, dfv, ang, q0=0.1, bfac=0.0, scale=1.0, offset=0.0, switches=None):
    """``CTF::getCTF`` (RELION 3.1) written out, elementwise."""
    lam = _wavelength()
    s2 = sx * sx + sy * sy
    theta = torch.atan2(sy, sx)
    df = 0.5 * (dfu + dfv) + 0.5 * (dfu - dfv) * torch.cos(2 * (theta - math.radians(ang)))
    k3 = math.atan(q0 / math.sqrt(1 - q0 * q0))
    gamma = -math.pi * lam * df * s2 + 0.5 * math.pi * CS * 1e7 * lam**3 * s2 * s2 - k3 + offset
    sw = switches or CtfSwitches()
    out = torch.empty_like(gamma)
    flat_g, flat_s2, flat_o = gamma.reshape(-1), s2.reshape(-1), out.view(-1)
    for i in range(flat_g.numel()):
        g = float(flat_g[i])
        v = 1.0 if sw.intact_first_peak and abs(g) < math.pi / 2 else -math.sin(g)
        v *= math.exp(-bfac / 4.0 * float(flat_s2[i]))
        if sw.phase_flipped:
            v = abs(v)
        elif sw.only_flip_phases:
            v = -1.0 if v < 0 else 1.0
        flat_o[i] = scale * v
    return out


def _optics_set(n, box, pixels, extra, *, rotations=None, ctf=None, shifts=None, images=None):
    """A set of ``n`` particles dealt in turn to optics groups of ``pixels`` with ``extra``."""
    ps = ParticleSet.from_arrays(
        rotations=rotations,
        shifts_px=shifts,
        ctf=ctf,
        pixel_size_angstrom=pixels[0],
        box_size=box,
        half_set=(np.arange(n) % 2) + 1,
        images=images,
    )
    groups = [OpticsGroup(i + 1, f"g{i + 1}", p, box, dict(extra)) for i, p in enumerate(pixels)]
    from dataclasses import replace

    return replace(ps, optics_groups=groups, optics_group=(np.arange(n) % len(pixels)) + 1)


def _ctf(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    df = torch.rand(n, generator=g, dtype=torch.float64) * 1.5e4 + 8e3
    return CTFParams.create(
        df + 300, df - 300, torch.rand(n, generator=g, dtype=torch.float64) * 180
    )


# --- tables and CTF against RELION's formulas -------------------------------------------------


def test_tables_and_ctf_match_relion_formulas():
    box, pixels = 24, (1.5, 1.65)
    ps = _optics_set(4, box, pixels, _extra(), ctf=_ctf(4))
    optics = ps.particle_optics()
    assert optics is not None and optics.has_odd and optics.has_even and optics.changes_geometry
    ky = torch.fft.fftfreq(box, d=1.0 / box, dtype=torch.float64)[:, None].expand(box, box // 2 + 1)
    kx = torch.arange(box // 2 + 1, dtype=torch.float64)[None, :].expand(box, box // 2 + 1)
    m = torch.tensor(MAG, dtype=torch.float64).reshape(2, 2)
    factor = optics.image_factor(box, dtype=torch.float64)
    ctf = optics.ctf_values(ps.ctf_params(dtype=torch.float64), box, dtype=torch.float64)
    for i in range(4):
        p = pixels[i % 2]
        sx = (m[0, 0] * kx + m[0, 1] * ky) / (box * p)
        sy = (m[1, 0] * kx + m[1, 1] * ky) / (box * p)
        radius = (pixels[0] / p) * torch.sqrt((sx * box * p) ** 2 + (sy * box * p) ** 2)
        keep = radius <= box // 2
        want = torch.polar(keep.double(), _odd_phase(sx, sy))
        assert torch.allclose(factor[i], want, atol=1e-12)
        row = ps.ctf[i]
        ref = _relion_ctf(sx, sy, row[0], row[1], row[2], offset=_even_offset(sx, sy))
        assert torch.allclose(ctf[i], ref, atol=1e-12)
    # the slice matrices are s_g M3ᵀ A: sample k lands at s_g Aᵀ (M k, 0)
    rot = _rotations(4)
    mats = optics.slice_matrices(rot)
    k = torch.tensor([3.0, -5.0, 0.0], dtype=torch.float64)
    for i in range(4):
        mk = torch.cat([m @ k[:2], k[2:]])
        want = (pixels[0] / pixels[i % 2]) * rot[i].T @ mk
        assert torch.allclose(mats[i].T @ k, want, atol=1e-12)


@pytest.mark.parametrize(
    "switches",
    [
        CtfSwitches(intact_first_peak=True),
        CtfSwitches(phase_flipped=True),
        CtfSwitches(only_flip_phases=True),
        CtfSwitches(True, True, False),
        CtfSwitches(True, False, True),
    ],
)
def test_ctf_switches_follow_get_ctf(switches):
    sx = torch.linspace(-0.2, 0.25, 23, dtype=torch.float64)[:, None].expand(23, 9)
    sy = torch.linspace(-0.1, 0.3, 9, dtype=torch.float64)[None, :].expand(23, 9)
    params = CTFParams.create(12000.0, 11000.0, 25.0, b_factor=40.0, scale=0.8)
    got = ctf_from_frequencies(params, sx, sy, switches=switches)[0]
    want = _relion_ctf(sx, sy, 12000.0, 11000.0, 25.0, bfac=40.0, scale=0.8, switches=switches)
    assert torch.allclose(got, want, atol=1e-12)


def test_shared_star_optics_tables_match_relion_formulas(shared_data):
    """``relion31.6opticsgroups.star`` (six groups, beam tilt, 6 odd and 9 even terms, mag
    matrices, three pixel sizes) read and turned into the per-group tables."""
    from cryograd.io.registry import read_particles

    path = shared_data / "cryodrgn" / "relion31.6opticsgroups.star"
    if not path.exists():
        pytest.skip(f"{path} absent")
    ps = read_particles(path)
    optics = ps.particle_optics()
    assert optics is not None and optics.has_odd and optics.has_even and optics.has_mag
    box = 16  # the tables' formulas do not depend on the box: a small one keeps this fast
    table = optics._tables(box)
    from cryograd.optics import even_index_to_mn, odd_index_to_mn
    from cryograd.optics.zernike import zernike_cartesian

    for gi, g in enumerate(ps.optics_groups):
        m = torch.tensor(
            [[float(g.extra[f"rlnMagMat{r}{c}"]) for c in "01"] for r in "01"], dtype=torch.float64
        )
        ky = torch.fft.fftfreq(box, d=1.0 / box, dtype=torch.float64)[:, None]
        kx = torch.arange(box // 2 + 1, dtype=torch.float64)[None, :]
        inv = 1.0 / (box * g.pixel_size_angstrom)
        sx = (m[0, 0] * kx + m[0, 1] * ky) * inv
        sy = (m[1, 0] * kx + m[1, 1] * ky) * inv
        lam = _wavelength(float(g.extra["rlnVoltage"]))
        cs = float(g.extra["rlnSphericalAberration"])
        tx, ty = float(g.extra["rlnBeamTiltX"]), float(g.extra["rlnBeamTiltY"])
        odd = [float(v) for v in str(g.extra["rlnOddZernike"]).strip("[]").split(",")]
        even = [float(v) for v in str(g.extra["rlnEvenZernike"]).strip("[]").split(",")]
        s2 = sx * sx + sy * sy
        want = -math.pi * 20000.0 * cs * lam * lam * s2 * (tx * sx + ty * sy)
        for i, c in enumerate(odd):
            want = want + c * zernike_cartesian(*odd_index_to_mn(i), sx, sy)
        want_even = torch.zeros_like(want)
        for i, c in enumerate(even):
            want_even = want_even + c * zernike_cartesian(*even_index_to_mn(i), sx, sy)
        assert torch.allclose(table["odd"][gi], want, atol=1e-9)
        assert torch.allclose(table["even"][gi], want_even, atol=1e-9)
        scale = ps.pixel_size_angstrom / g.pixel_size_angstrom
        assert abs(float(optics.grid_scale[gi]) - scale) < 1e-12


# --- the forward model ------------------------------------------------------------------------


def test_forward_model_samples_a_blob_at_the_magnified_rescaled_frequency():
    """Projection of a Gaussian blob (closed-form spectrum) with CTF, shift and all optics."""
    box, pixels, sigma = 32, (2.0, 2.2), 1.6
    n = 4
    rot = _rotations(n, seed=5)
    shifts = torch.tensor([[1.5, -0.5], [0.0, 2.0], [-1.0, 0.3], [0.7, 0.7]], dtype=torch.float64)
    ctf = _ctf(n, seed=2)
    ps = _optics_set(n, box, pixels, _extra(), rotations=rot, ctf=ctf, shifts=shifts)
    optics = ps.particle_optics()
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # blob centre (x, y, z), px
    z, y, x = torch.meshgrid(
        *[torch.arange(box, dtype=torch.float64) - box // 2] * 3, indexing="ij"
    )
    vol = torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma**2))
    model = ForwardModel(box, pixels[0])
    img = model.project(vol, rot, shifts, ctf, optics=optics)
    got = rfft2_centered(img)
    ky = torch.fft.fftfreq(box, d=1.0 / box, dtype=torch.float64)[:, None].expand(box, box // 2 + 1)
    kx = torch.arange(box // 2 + 1, dtype=torch.float64)[None, :].expand(box, box // 2 + 1)
    m = torch.tensor(MAG, dtype=torch.float64).reshape(2, 2)
    low = kx**2 + ky**2 <= 8.0**2
    for i in range(n):
        p = pixels[i % 2]
        mkx, mky = m[0, 0] * kx + m[0, 1] * ky, m[1, 0] * kx + m[1, 1] * ky
        q = (pixels[0] / p) * (mkx[..., None] * rot[i, 0] + mky[..., None] * rot[i, 1])  # (.., 3)
        blob = (2 * math.pi * sigma**2) ** 1.5 * torch.exp(
            -2 * math.pi**2 * sigma**2 * (q * q).sum(-1) / box**2
        )
        blob = blob * torch.exp(-2j * math.pi * (q @ c) / box)
        sx, sy = mkx / (box * p), mky / (box * p)
        row = ps.ctf[i]
        ctf_v = _relion_ctf(sx, sy, row[0], row[1], row[2], offset=_even_offset(sx, sy))
        ramp = torch.exp(2j * math.pi * (kx * shifts[i, 0] + ky * shifts[i, 1]) / box)
        want = blob * ctf_v * ramp * torch.exp(1j * _odd_phase(sx, sy))
        err = (got[i] - want)[low].abs().max() / want[low].abs().max()
        assert err < 0.01, (i, float(err))


@pytest.mark.parametrize("projector", ["fourier", "real"])
def test_forward_model_with_optics_passes_the_dot_product_test(projector):
    box, n = 16, 5
    rot = _rotations(n, seed=1)
    ctf = _ctf(n)
    mag = MAG if projector == "fourier" else None
    pixels = (1.5, 1.7) if projector == "fourier" else (1.5,)
    ps = _optics_set(n, box, pixels, _extra(mag=mag), rotations=rot, ctf=ctf)
    optics = ps.particle_optics()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(box, box, box, generator=g, dtype=torch.float64)
    y = torch.randn(n, box, box, generator=g, dtype=torch.float64)
    shifts = torch.randn(n, 2, generator=g, dtype=torch.float64)
    model = ForwardModel(box, 1.5, projector)
    ax = model.project(x, rot, shifts, ctf, optics=optics)
    aty = model.backproject(y, rot, shifts, ctf, optics=optics)
    lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    # the gradient of the autograd path is the same back-projection
    xg = x.clone().requires_grad_(True)
    (model.project(xg, rot, shifts, ctf, optics=optics) * y).sum().backward()
    assert torch.allclose(xg.grad, aty, atol=1e-10)


def test_real_space_projector_refuses_magnification():
    from cryograd.errors import CryogradError

    ps = _optics_set(2, 16, (1.5,), _extra(), rotations=_rotations(2), ctf=_ctf(2))
    model = ForwardModel(16, 1.5, "real")
    with pytest.raises(CryogradError, match="Fourier-slice projector"):
        model.project(torch.zeros(16, 16, 16), _rotations(2), optics=ps.particle_optics())


# --- the insertion: compiled loop against torch -----------------------------------------------


def _insert(box, dtype, optics, symmetry=None):
    b = len(optics)
    g = torch.Generator().manual_seed(7)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    spectra = torch.randn(b, box, box // 2 + 1, generator=g, dtype=cdtype)
    shifts = torch.randn(b, 2, generator=g, dtype=dtype) * 3
    col = torch.ones(box // 2 + 1, dtype=dtype)
    col[0] = 0.5
    proj = FourierSliceProjector(box, pad=2.0)
    num, wts = proj.new_accumulators("cpu", dtype, packed=True)
    proj.insert(
        spectra,
        _rotations(b, seed=4).to(dtype),
        num,
        wts,
        ctf=_ctf(b, seed=9),
        shifts_px=shifts,
        pixel_size_angstrom=1.5,
        premultiplied=torch.arange(b) % 3 == 0,
        sample_weights=col,
        symmetry=symmetry,
        optics=optics,
    )
    return proj.fold_accumulators(num, wts)


@pytest.mark.skipif(not cpu.available(), reason="compiled CPU loops not built")
@pytest.mark.parametrize("switches", [CtfSwitches(), CtfSwitches(True, True, False)])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 5e-5), (torch.float64, 1e-12)], ids=["f32", "f64"]
)
@pytest.mark.parametrize("sym", [None, "D2"])
def test_compiled_insertion_with_optics_matches_torch(dtype, tol, switches, sym, monkeypatch):
    from cryograd.symmetry import symmetry_matrices

    box, b = 16, 9
    lam = [_wavelength(), _wavelength(200.0)]
    table = {k: [v, v] for k, v in _extra().items()}
    table["rlnMagMat00"] = [1.02, 0.98]
    table["rlnSphericalAberration"] = [CS, CS]
    ab = GroupAberrations.from_table(table, lam)
    px = torch.tensor([1.5, 1.4], dtype=torch.float64)
    optics = ParticleOptics(torch.arange(b) % 2, ab, px, 1.5 / px, switches)
    symmetry = None if sym is None else symmetry_matrices(sym).to(dtype)
    monkeypatch.setenv("CRYOGRAD_KERNELS", "torch")
    ref_num, ref_w = _insert(box, dtype, optics, symmetry)
    monkeypatch.setenv("CRYOGRAD_KERNELS", "cpu")
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            num, wts = _insert(box, dtype, optics, symmetry)
            assert (num - ref_num).abs().max() <= tol * ref_num.abs().max()
            assert (wts - ref_w).abs().max() <= tol * ref_w.abs().max()
    finally:
        torch.set_num_threads(before)


# --- invariance: the odd factor applied to the images leaves the map unchanged ----------------


def _clean_set(n, box, seed=0):
    """``n`` noisy images of the bundled map's central ``box``³ (its 2.72 Å pixel), with the
    poses, shifts and CTFs they were made with."""
    from pathlib import Path

    import cryograd.data
    from cryograd.io.mrc import read_map

    mapdata = read_map(Path(cryograd.data.__file__).parent / "emd_5168_64.mrc")
    full = torch.from_numpy(mapdata.data.astype(np.float64))
    o = (full.shape[0] - box) // 2
    vol = full[o : o + box, o : o + box, o : o + box].contiguous()
    pixel = float(mapdata.voxel_size_angstrom)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    from scipy.spatial.transform import Rotation

    rot = torch.as_tensor(Rotation.from_quat(q).as_matrix())
    shifts = torch.as_tensor(rng.uniform(-2, 2, (n, 2)))
    df = rng.uniform(8000, 20000, n)
    ctf = CTFParams.create(df + 200, df - 200, rng.uniform(0, 180, n))
    images = ForwardModel(box, pixel).project(vol, rot, shifts, ctf)
    sigma = 0.5 * float(images.std())
    images = images + sigma * torch.as_tensor(rng.standard_normal(tuple(images.shape)))
    return pixel, rot, shifts, ctf, images


def _direct_map(ps):
    ins = insert_particles(ps, np.arange(len(ps)), dtype=torch.float64, progress=False)
    return wiener_reconstruct(ins, 1e-3 * float(ins.weights.mean()))


@pytest.mark.parametrize("with_mag", [False, True])
def test_odd_aberrations_applied_to_the_images_leave_the_map_unchanged(with_mag):
    """Box 32: images times ``exp(+iφ)`` (written here from RELION's formulas), the tilt and
    trefoil recorded in the optics table: FSC with the clean set's map >= 0.99 in every shell
    (without the correction the maps disagree badly)."""
    box, n = 32, 600
    pixel, rot, shifts, ctf, images = _clean_set(n, box)
    mag = MAG if with_mag else None
    extra = _extra(trefoil=4.0 * TREFOIL, fourfold=0.0, mag=mag, tilt=(6.0, -4.0))
    extra.pop("rlnEvenZernike")
    clean = _optics_set(
        n,
        box,
        (pixel,),
        {} if mag is None else _extra_mag(mag),
        rotations=rot,
        ctf=ctf,
        shifts=shifts,
        images=images.numpy(),
    )
    ky = torch.fft.fftfreq(box, d=1.0 / box, dtype=torch.float64)[:, None]
    kx = torch.arange(box // 2 + 1, dtype=torch.float64)[None, :]
    m = torch.eye(2, dtype=torch.float64) if mag is None else torch.tensor(mag).reshape(2, 2)
    sx = (m[0, 0] * kx + m[0, 1] * ky) / (box * pixel)
    sy = (m[1, 0] * kx + m[1, 1] * ky) / (box * pixel)
    phase = _odd_phase(sx, sy, tilt=(6.0, -4.0), trefoil=4.0 * TREFOIL)
    assert float(phase.abs().max()) > 2.0  # a strong aberration at Nyquist
    spectra = rfft2_centered(images) * torch.exp(1j * phase)
    aberrated = torch.fft.fftshift(torch.fft.irfft2(spectra, s=(box, box)), dim=(-2, -1))
    tilted = _optics_set(
        n, box, (pixel,), extra, rotations=rot, ctf=ctf, shifts=shifts, images=aberrated.numpy()
    )
    plain = _optics_set(
        n,
        box,
        (pixel,),
        {} if mag is None else _extra_mag(mag),
        rotations=rot,
        ctf=ctf,
        shifts=shifts,
        images=aberrated.numpy(),
    )
    ref, corrected, uncorrected = _direct_map(clean), _direct_map(tilted), _direct_map(plain)
    curve = fsc(ref, corrected)[1 : box // 2]
    assert float(curve.min()) >= 0.99, curve
    assert float(fsc(ref, uncorrected)[1 : box // 2].min()) < 0.9


def _extra_mag(mag):
    return dict(zip(("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11"), mag))


# --- plumbing: simulate writes what it applied, the batches carry the optics ------------------


def test_simulate_records_its_optics_and_reads_them_back(tmp_path):
    from cryograd.io.registry import read_particles
    from cryograd.simulation import simulate

    box = 24
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    vol = np.exp(-((x - 2) ** 2 + y**2 + (z + 1) ** 2) / 8.0).astype(np.float32)
    odd = (0.0, 0.0, 30.0, 0.0, 0.0, 0.0)
    even = (0.0,) * 8 + (500.0,)
    res = simulate(
        vol,
        6,
        2.0,
        out_dir=tmp_path / "sim",
        snr=float("inf"),
        progress=False,
        beam_tilt_mrad=TILT,
        odd_zernike=odd,
        even_zernike=even,
        mag_matrix=MAG,
        group_pixel_sizes=(2.0, 2.3),
    )
    ps = read_particles(res.star_path)
    assert [g.pixel_size_angstrom for g in ps.optics_groups] == [2.0, 2.3]
    ab = ps.group_aberrations()
    lam = _wavelength()
    z3x, z3y = (-math.pi * 20000 * CS * lam * lam * t / 3 for t in TILT)  # insertTilt
    want = torch.tensor(odd, dtype=torch.float64)
    want[1] += 2 * z3x
    want[0] += 2 * z3y
    want[4] += z3x
    want[3] += z3y
    assert torch.allclose(ab.odd[1], want, rtol=1e-6)
    assert torch.allclose(ab.even[0], torch.tensor(even, dtype=torch.float64))
    assert torch.allclose(ab.mag[1].reshape(-1), torch.tensor(MAG, dtype=torch.float64))
    images = torch.from_numpy(ps.images(np.arange(6))).double()
    model = ForwardModel(box, 2.0)
    rot = torch.as_tensor(ps.rotations)
    pred = model.project(
        torch.from_numpy(vol).double(),
        rot,
        torch.as_tensor(ps.shifts_px),
        ps.ctf_params(dtype=torch.float64),
        optics=ps.particle_optics(),
    )
    assert float((pred - images).abs().max()) <= 1e-3 * float(images.abs().max())
    plain = model.project(
        torch.from_numpy(vol).double(), rot, torch.as_tensor(ps.shifts_px), ps.ctf_params()
    )
    assert float((plain - images).abs().max()) > 0.05 * float(images.abs().max())


def test_batches_carry_the_ctf_switches():
    from cryograd.solvers.batches import expand_symmetry, load_batch
    from cryograd.symmetry import symmetry_matrices

    n, box = 4, 16
    ps = _optics_set(
        n,
        box,
        (1.5,),
        {},
        rotations=_rotations(n),
        ctf=_ctf(n),
        images=np.zeros((n, box, box), np.float32),
    )
    assert load_batch(ps, np.arange(n)).optics is None  # nothing to apply: the plain path
    plain = load_batch(ps, np.arange(n), dtype=torch.float64).ctf
    ps.ctf_switches = CtfSwitches(phase_flipped=True)
    batch = load_batch(ps, np.arange(n), dtype=torch.float64)
    assert batch.optics is not None and torch.allclose(batch.ctf, plain.abs(), atol=1e-12)
    sym = expand_symmetry(batch, symmetry_matrices("C3").double())
    assert len(sym.optics) == 3 * n


# --- Ewald sphere -----------------------------------------------------------------------------


def _relion_soft_mask(img: np.ndarray, radius: float, width: float) -> np.ndarray:
    """``softMaskOutsideMap`` (mask.cpp) written out on one image, centre ``N // 2``."""
    n = img.shape[0]
    out = img.copy()
    outer = radius + width
    s = sb = 0.0
    for i in range(n):
        for j in range(n):
            r = math.hypot(i - n // 2, j - n // 2)
            if r < radius:
                continue
            w = 1.0 if r > outer else 0.5 + 0.5 * math.cos(math.pi * (outer - r) / width)
            s += w
            sb += w * img[i, j]
    bg = sb / s
    for i in range(n):
        for j in range(n):
            r = math.hypot(i - n // 2, j - n // 2)
            if r >= radius:
                w = 1.0 if r > outer else 0.5 + 0.5 * math.cos(math.pi * (outer - r) / width)
                out[i, j] = (1 - w) * img[i, j] + w * bg
    return out


def test_soft_mask_matches_relion():
    from cryograd.solvers.ewald import soft_mask_outside

    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 14, 14))
    got = soft_mask_outside(torch.from_numpy(img), 4.0, 3.0).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], _relion_soft_mask(img[i], 4.0, 3.0), atol=1e-12)


@pytest.mark.parametrize("sectors", [2, 4, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_ctfp_split_adds_up_to_twice_the_ctf(sectors, reverse):
    """Without a mask, every pixel gets ``X · CTFP`` in one image and ``X · CTFQ`` in the other,
    whatever the sectors: ``P + Q = −2 sin γ · X`` and ``|P| = |Q| = |X|``."""
    from cryograd.optics import EwaldSettings
    from cryograd.solvers.ewald import ctfp_split

    n = 16
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, n, n, generator=g, dtype=torch.float64)
    x = rfft2_centered(img)
    gamma = torch.randn(2, n, n // 2 + 1, generator=g, dtype=torch.float64) * 3
    settings = EwaldSettings(100.0, sectors, reverse)
    p, q = ctfp_split(x, gamma, settings, radius_px=1000.0)
    # the kx = 0 and Nyquist columns go through the inverse FFT's Hermitian projection (FFTW's
    # c2r does the same in RELION), which mixes CTFP at ±ky there
    inside = torch.ones(n, n // 2 + 1, dtype=torch.bool)
    inside[:, 0] = False
    inside[:, -1] = False
    assert torch.allclose((p + q)[:, inside], (-2 * torch.sin(gamma) * x)[:, inside], atol=1e-10)
    assert torch.allclose(p.abs()[:, inside], x.abs()[:, inside], atol=1e-10)
    assert torch.allclose(q.abs()[:, inside], x.abs()[:, inside], atol=1e-10)


def test_ewald_offsets_bend_the_slice_onto_the_sphere():
    """A sample ``k`` with offset ``z`` lands at ``(P/D) Aᵀ (kx, ky, z)``: on the sphere of
    radius ``r`` through the origin, ``|q − r e_z'|² = r²`` to first order."""
    from cryograd.projectors.fourier_slice.geometry import SliceGeometry, slice_sample_positions

    box, padded = 16, 32
    rot = _rotations(2, seed=8)
    kx, ky, flat = slice_sample_positions(box, dtype=torch.float64)
    r = 500.0
    z = (kx**2 + ky**2) / (2 * r)
    geom = SliceGeometry(rot, box, padded, z.expand(2, -1))
    base = SliceGeometry(rot, box, padded)
    # the offset moves each sample along the beam axis A[2] by (P/D) z
    q_off = torch.stack([geom.fx, geom.fy, geom.fz], -1)
    q_base = torch.stack([base.fx, base.fy, base.fz], -1)
    assert not torch.allclose(q_off, q_base)
    for i in range(2):
        q = (padded / box) * (
            kx[:, None] * rot[i, 0] + ky[:, None] * rot[i, 1] + z[:, None] * rot[i, 2]
        )
        mirror = q[:, 0] < 0
        q = torch.where(mirror[:, None], -q, q)
        frac = q - torch.floor(q)
        got = q_off.reshape(2, -1, 3)[i]
        assert torch.allclose(got, frac, atol=1e-9)
