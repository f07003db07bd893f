"""cryograd postprocess against RELION's own arithmetic: glibc's ``rand()`` stream (the C library,
and its well-known first values), the FSC curves, B-factor and sharpened maps of
``relion_postprocess``, and the local-resolution maps of ``relion_postprocess --locres`` (skipped
without RELION); the Fourier-cropped local resolution against the full-box computation."""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess

import numpy as np
import pytest
import torch

from cryograd.postprocess import LocresConfig, local_resolution, postprocess
from cryograd.postprocess.masks import sphere_mask
from cryograd.postprocess.relion_random import GlibcRand
from cryograd.postprocess.run import PostprocessConfig

SCALE = 3.0  # signal amplitude over the unit noise: resolutions between 4 and 50 Å
HAVE_RELION = shutil.which("relion_postprocess") is not None


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name or "libc.so.6")
        lib.gnu_get_libc_version.restype = ctypes.c_char_p
        lib.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    return lib


def test_glibc_rand_known_values():
    # glibc: srand(1) (and srand(0), which glibc treats as 1) then rand() gives these
    first = [1804289383, 846930886, 1681692777, 1714636915, 1957747793]
    assert GlibcRand(1).draw(5).tolist() == first
    assert GlibcRand(0).draw(5).tolist() == first


@pytest.mark.skipif(_glibc() is None, reason="not glibc")
@pytest.mark.parametrize("seed", [0, 3, 2**31 + 5])
def test_glibc_rand_equals_the_c_library(seed):
    lib = _glibc()
    lib.srand(ctypes.c_uint(seed))
    ref = np.array([lib.rand() for _ in range(50_000)])
    rng = GlibcRand(seed)
    mine = np.concatenate([rng.draw(7), rng.draw(20_000), rng.draw(29_993)])
    assert np.array_equal(mine, ref)


def _halves(box: int, apix: float, seed: int = 0):
    """A blob with a B-factor-like fall-off plus independent noise in each half."""
    g = torch.Generator().manual_seed(seed)
    k = torch.fft.fftfreq(box, d=1 / box, dtype=torch.float64)
    kr = torch.sqrt(k.view(-1, 1, 1) ** 2 + k.view(1, -1, 1) ** 2 + k.view(1, 1, -1) ** 2)
    s = kr / (box * apix)
    spec = torch.fft.fftn(torch.randn((box,) * 3, generator=g, dtype=torch.float64))
    signal = torch.fft.ifftn(spec * torch.exp(-150 * s**2 / 4)).real
    signal = signal * sphere_mask(box, box // 3, 3) * SCALE
    noise = [torch.randn((box,) * 3, generator=g, dtype=torch.float64) for _ in range(2)]
    return signal + noise[0], signal + noise[1]


def _write(path, vol, apix):
    from cryograd.io.mrc import write_map

    write_map(path, np.asarray(vol, dtype=np.float32), apix)
    return str(path)


def _read(path) -> np.ndarray:
    import mrcfile

    return mrcfile.read(path).astype(np.float64)


@pytest.mark.skipif(not HAVE_RELION, reason="RELION not installed")
def test_fsc_bfactor_and_maps_equal_relion_postprocess(tmp_path):
    import starfile

    box, apix = 40, 2.0
    h1, h2 = (
        torch.from_numpy(_read(_write(tmp_path / f"h{i}.mrc", v, apix)))
        for i, v in enumerate(_halves(box, apix), 1)
    )
    mask = sphere_mask(box, box // 3 + 2, 5)
    _write(tmp_path / "mask.mrc", mask, apix)
    mask = torch.from_numpy(_read(tmp_path / "mask.mrc"))
    base = ["relion_postprocess", "--i", str(tmp_path / "h1.mrc"), "--i2", str(tmp_path / "h2.mrc")]
    base += ["--mask", str(tmp_path / "mask.mrc"), "--angpix", str(apix), "--auto_bfac"]
    for extra, name in (([], "pp"), (["--low_pass", "-1"], "lp")):
        subprocess.run(
            base + extra + ["--o", str(tmp_path / name)], check=True, capture_output=True
        )
    star = starfile.read(tmp_path / "pp.star", always_dict=True)
    gen, fsc = star["general"], star["fsc"]
    res = postprocess(h1, h2, apix, mask=mask, config=PostprocessConfig(low_pass_angstrom=0))
    for mine, col in (
        (res.fsc.fsc_unmasked, "rlnFourierShellCorrelationUnmaskedMaps"),
        (res.fsc.fsc_masked, "rlnFourierShellCorrelationMaskedMaps"),
        (
            res.fsc.fsc_randomized_masked,
            "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps",
        ),
        (res.fsc.fsc_corrected, "rlnFourierShellCorrelationCorrected"),
    ):
        assert np.abs(np.asarray(mine) - fsc[col].to_numpy()).max() < 1e-5, col
    assert res.resolution_shell_angstrom == pytest.approx(float(gen["rlnFinalResolution"]), 1e-5)
    assert res.bfactor_a2 == pytest.approx(float(gen["rlnBfactorUsedForSharpening"]), rel=1e-4)
    sel = mask.numpy() > 0.5
    lowpassed = postprocess(h1, h2, apix, mask=mask)
    for mine, ref in ((res, "pp_masked.mrc"), (lowpassed, "lp_masked.mrc")):
        r = _read(tmp_path / ref)
        assert np.corrcoef(mine.sharpened_masked.numpy()[sel], r[sel])[0, 1] > 0.99999
        assert np.abs(mine.sharpened_masked.numpy() - r).max() < 1e-4 * np.abs(r).max()


def _noisier_right(box: int, apix: float):
    h1, h2 = _halves(box, apix, seed=4)
    g = torch.Generator().manual_seed(9)
    right = (torch.arange(box) >= box // 2).double().view(1, 1, -1)
    return tuple(
        h + 2.0 * right * torch.randn(h.shape, generator=g, dtype=h.dtype) for h in (h1, h2)
    )


@pytest.mark.skipif(not HAVE_RELION, reason="RELION not installed")
def test_locres_equals_relion_locres(tmp_path):
    box, apix = 40, 2.0
    h1, h2 = _noisier_right(box, apix)
    files = [_write(tmp_path / f"l{i}.mrc", v, apix) for i, v in ((1, h1), (2, h2))]
    h1, h2 = (torch.from_numpy(_read(f)) for f in files)
    cmd = ["relion_postprocess", "--i", files[0], "--i2", files[1], "--angpix", str(apix)]
    cmd += ["--locres", "--locres_sampling", "12", "--adhoc_bfac", "-50"]
    subprocess.run(cmd + ["--o", str(tmp_path / "r")], check=True, capture_output=True)
    ref, ref_fil = _read(tmp_path / "r_locres.mrc"), _read(tmp_path / "r_locres_filtered.mrc")
    cfg = LocresConfig(sampling_angstrom=12.0, bfactor_a2=-50.0, device="cpu")
    exact = local_resolution(h1, h2, apix, LocresConfig(**{**cfg.__dict__, "exact": True}))
    have = ref > 0
    assert np.abs(exact.locres_angstrom.numpy() - ref)[have].max() < 1e-3
    assert np.abs(exact.filtered.numpy() - ref_fil).max() < 1e-4 * np.abs(ref_fil).max()
    windowed = local_resolution(h1, h2, apix, cfg)
    assert np.corrcoef(windowed.locres_angstrom.numpy()[have], ref[have])[0, 1] > 0.8


def test_fourier_cropped_locres_equals_the_full_box():
    """With a band-limited signal the crop applies; ``exact=True`` (full box, no windows) is
    RELION's arithmetic (test above). ``crop_factor=0.5`` sends points to the full box."""
    box, apix = 72, 2.0
    h1, h2 = _noisier_right(box, apix)
    k = torch.fft.fftfreq(box, d=1 / box, dtype=torch.float64)
    kx = torch.fft.rfftfreq(box, d=1 / box, dtype=torch.float64)
    kr = torch.sqrt(k.view(-1, 1, 1) ** 2 + k.view(1, -1, 1) ** 2 + kx.view(1, 1, -1) ** 2)
    band = (kr <= 7).double()
    h1, h2 = (torch.fft.irfftn(torch.fft.rfftn(h) * band, s=(box,) * 3) for h in (h1, h2))
    base = dict(sampling_angstrom=40.0, randomize_at_angstrom=60.0, bfactor_a2=-50.0, device="cpu")
    exact = local_resolution(h1, h2, apix, LocresConfig(**base, exact=True))
    crop = local_resolution(h1, h2, apix, LocresConfig(**base, windows=False))
    assert crop.crop_box < box
    forced = local_resolution(h1, h2, apix, LocresConfig(**base, windows=False, crop_factor=0.5))
    assert forced.n_full_box > 0
    for lr in (crop, forced):
        assert np.array_equal(lr.resolutions_angstrom, exact.resolutions_angstrom)
        f, e = lr.filtered.numpy(), exact.filtered.numpy()
        assert np.abs(f - e).max() < 2e-3 * np.abs(e).max()
        assert np.abs(lr.locres_angstrom.numpy() - exact.locres_angstrom.numpy()).max() < 1e-3
