"""RELION STAR reading (3.0 to 5.0) and 3.1 writing, against the real files in ../shared/data."""

from __future__ import annotations

import time

import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryograd.errors import CryogradError
from cryograd.io.registry import read_particles
from cryograd.io.star import write_star
from cryograd.particles import ParticleSet
from tests.conftest import shared_file

# (file, particles, pixel size Å, box, angpix to give); counts and pixel sizes from PROVENANCE.md
PARTICLE_STARS = [
    ("cryodrgn/relion31.star", 5, 2.806, 256, None),
    ("cryodrgn/relion31.v2.star", 5, 2.806, 256, None),
    ("cryodrgn/empiar_10076_7.star", 7, 1.31, 320, None),
    ("cryodrgn/sta_testing_bin8.star", 219, 1.96, 64, None),
    ("cryodrgn/sta_testing.star", 219, 1.96, None, None),
    ("cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star", 5, 1.035, None, None),
    ("cryodrgn/relion31.6opticsgroups.star", 139, 1.25, 196, None),
    ("cryodrgn/relion5.star", 17, 0.89, 448, None),
    ("cryodrgn/toy_projections.star", 1000, 1.0, 30, 1.0),
    ("aspire/rln_proj_65.star", 5, 5.0, 65, 5.0),
    ("aspire/rln_proj_64.star", 5, 5.0, 64, 5.0),
    ("aspire/rln_proj_65_centered.star", 4, 5.0, 65, 5.0),
    ("aspire/rln_proj_65_shifted.star", 4, 5.0, 65, 5.0),
    ("aspire/rln_proj_64_centered.star", 4, 5.0, 64, 5.0),
    ("aspire/rln_proj_64_shifted.star", 4, 5.0, 64, 5.0),
    ("aspire/sample_particles_relion30.star", 17, 5e4 / 37369.2, 200, None),
    ("aspire/sample_particles_relion31.star", 17, 1.4, 200, None),
    ("aspire/sample_relion_symmetry_group_D4.star", 17, 5e4 / 37369.2, 200, None),
    ("aspire/sample_relion_one_image.star", 1, 5e4 / 37369.2, None, None),
    ("aspire/sample_incomplete_ctf_params.star", 1, 5e4 / 37369.2, 200, None),
    ("cryojax/test_starfile.star", 3, 12.0, 16, None),
    ("tomodrgn/warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star", 40, 12.0, 32, None),
    ("starfile/one_loop.star", 16, None, None, None),
]

NON_PARTICLE = [
    "starfile/default_pipeline.star",
    "starfile/postprocess.star",
    "aspire/sample_data_model.star",
    "aspire/sample.star",
    "starfile/relion_tutorial/run_it025_sampling_3D.star",
]


def _zyz_reference(rot, tilt, psi) -> np.ndarray:
    """RELION's A from scipy: from_euler('ZYZ', ...) is Aᵀ (CONVENTIONS.md)."""
    return (
        Rotation.from_euler("ZYZ", np.stack([rot, tilt, psi], 1), degrees=True)
        .as_matrix()
        .transpose(0, 2, 1)
    )


@pytest.mark.parametrize("name,count,pixel,box,angpix", PARTICLE_STARS)
def test_every_particle_star_reads(name, count, pixel, box, angpix):
    ps = read_particles(shared_file(name), angpix=angpix)
    assert len(ps) == count
    if pixel is not None:
        assert ps.pixel_size_angstrom == pytest.approx(pixel, abs=2e-3)
    if box is not None:
        assert ps.box_size == box
    assert ps.optics_group.shape == (count,)
    assert ps.pixel_sizes_angstrom.shape == (count,)


def test_one_loop_pixel_size_from_detector_fields():
    path = shared_file("starfile/one_loop.star")
    df = starfile.read(path)
    ps = read_particles(path)
    expected = df["rlnDetectorPixelSize"].to_numpy() * 1e4 / df["rlnMagnification"].to_numpy()
    np.testing.assert_allclose(ps.pixel_sizes_angstrom, expected, rtol=1e-6)


@pytest.mark.parametrize("name", NON_PARTICLE)
def test_non_particle_or_malformed_star_fails_naming_file(name):
    path = shared_file(name)
    with pytest.raises(CryogradError) as info:
        read_particles(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_relion31_origins_and_angles_follow_relion():
    path = shared_file("cryodrgn/relion31.star")
    raw = starfile.read(path, always_dict=True)
    parts, optics = raw["particles"], raw["optics"]
    ps = read_particles(path)
    pixel = float(optics["rlnImagePixelSize"].iloc[0])
    assert pixel == 2.806
    np.testing.assert_allclose(ps.shifts_px[:, 0] * pixel, parts["rlnOriginXAngst"], atol=1e-9)
    np.testing.assert_allclose(ps.shifts_px[:, 1] * pixel, parts["rlnOriginYAngst"], atol=1e-9)
    np.testing.assert_allclose(ps.shifts_angstrom[:, 0], parts["rlnOriginXAngst"], atol=1e-9)
    ref = _zyz_reference(parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"])
    np.testing.assert_allclose(ps.rotations, ref, atol=1e-12)
    # CTF fields: particle columns plus the optics group's voltage/Cs/Q0
    c = ps.ctf_params(dtype=__import__("torch").float64)
    np.testing.assert_allclose(c.defocus_u_angstrom.numpy(), parts["rlnDefocusU"])
    np.testing.assert_allclose(c.defocus_angle_degrees.numpy(), parts["rlnDefocusAngle"])
    np.testing.assert_allclose(c.b_factor.numpy(), parts["rlnCtfBfactor"])
    assert np.all(c.voltage_kv.numpy() == 300.0)
    assert np.all(c.spherical_aberration_mm.numpy() == 0.01)
    assert np.all(c.amplitude_contrast.numpy() == 0.1)
    np.testing.assert_array_equal(ps.half_set, parts["rlnRandomSubset"])
    np.testing.assert_array_equal(ps.class_number, parts["rlnClassNumber"])


def test_block_order_does_not_matter():
    a = read_particles(shared_file("cryodrgn/relion31.star"))
    b = read_particles(shared_file("cryodrgn/relion31.v2.star"))
    np.testing.assert_array_equal(a.rotations, b.rotations)
    np.testing.assert_array_equal(a.shifts_px, b.shifts_px)
    np.testing.assert_array_equal(a.ctf, b.ctf)
    assert a.box_size == b.box_size and a.pixel_size_angstrom == b.pixel_size_angstrom


def test_six_optics_groups_joined_on_group_number():
    path = shared_file("cryodrgn/relion31.6opticsgroups.star")
    raw = starfile.read(path, always_dict=True)
    merged = raw["particles"].merge(raw["optics"], on="rlnOpticsGroup", how="left")
    ps = read_particles(path)
    assert len(ps.optics_groups) == 6
    np.testing.assert_array_equal(ps.optics_group, raw["particles"]["rlnOpticsGroup"])
    np.testing.assert_allclose(ps.pixel_sizes_angstrom, merged["rlnImagePixelSize"])
    np.testing.assert_allclose(
        ps.shifts_px[:, 0], merged["rlnOriginXAngst"] / merged["rlnImagePixelSize"], rtol=1e-12
    )
    np.testing.assert_allclose(ps.ctf[:, 3], merged["rlnVoltage"])
    assert sorted({g.pixel_size_angstrom for g in ps.optics_groups}) == [1.24, 1.25]
    # bracketed aberration arrays are kept per group
    odd = ps.optics_groups[0].extra["rlnOddZernike"]
    assert str(odd).startswith("[")
    assert not ps.ctf_premultiplied.any()


def test_relion30_per_particle_voltage_makes_optics_groups():
    path = shared_file("aspire/sample_particles_relion30.star")
    df = starfile.read(path)
    ps = read_particles(path)
    np.testing.assert_allclose(ps.ctf[:, 3], df["rlnVoltage"])
    assert len(ps.optics_groups) == len(np.unique(df["rlnVoltage"])) == 2
    # one group per voltage
    for g in ps.optics_groups:
        assert len(np.unique(ps.ctf[ps.optics_group == g.number, 3])) == 1
    np.testing.assert_allclose(ps.shifts_px[:, 0], df["rlnOriginX"])  # 3.0: pixels


def test_relion30_pfcrt_amplitude_contrast_default_and_half_sets():
    path = shared_file("cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    df = starfile.read(path)
    ps = read_particles(path)
    assert np.all(ps.ctf[:, 5] == 0.1)  # RELION's default Q0 when the column is absent
    np.testing.assert_array_equal(ps.half_set, df["rlnRandomSubset"])
    assert ps.box_size is None  # neither rlnImageSize nor images
    assert read_particles(path, box_size=300).box_size == 300


def test_angpix_overrides_file_pixel_size():
    ps = read_particles(shared_file("cryodrgn/sta_testing_bin8.star"), angpix=14.56)
    assert ps.pixel_size_angstrom == 14.56
    assert np.all(ps.pixel_sizes_angstrom == 14.56)


def test_incomplete_ctf_is_reported_not_used():
    ps = read_particles(shared_file("aspire/sample_incomplete_ctf_params.star"))
    assert ps.ctf is None and ps.ctf_params() is None
    assert any("rlnVoltage" in n for n in ps.notes)


def _write(path, text):
    path.write_text(text)
    return path


STAR30_NO_PIXEL = """data_

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnVoltage #3
_rlnSphericalAberration #4
1@x.mrcs 10000 300 2.7
2@x.mrcs 11000 300 2.7
"""


def test_unknown_pixel_size_names_angpix(tmp_path):
    path = _write(tmp_path / "p30.star", STAR30_NO_PIXEL)
    with pytest.raises(CryogradError, match="--angpix") as info:
        read_particles(path)
    assert str(path) in str(info.value)
    assert read_particles(path, angpix=1.5).pixel_size_angstrom == 1.5


def test_nan_metadata_names_row_and_column(tmp_path):
    text = STAR30_NO_PIXEL.replace("2@x.mrcs 11000", "2@x.mrcs nan")
    path = _write(tmp_path / "nan.star", text)
    with pytest.raises(CryogradError, match=r"row 2, column rlnDefocusU"):
        read_particles(path, angpix=1.0)
    path = _write(
        tmp_path / "inf.star", STAR30_NO_PIXEL.replace("1@x.mrcs 10000 300", "1@x.mrcs 1 inf")
    )
    with pytest.raises(CryogradError, match=r"row 1, column rlnVoltage"):
        read_particles(path, angpix=1.0)


MIXED_BOX = """data_optics

loop_
_rlnOpticsGroup
_rlnImagePixelSize
_rlnImageSize
_rlnVoltage
_rlnSphericalAberration
_rlnAmplitudeContrast
1 1.0 64 300 2.7 0.1
2 1.0 128 300 2.7 0.1

data_particles

loop_
_rlnImageName
_rlnOpticsGroup
_rlnDefocusU
1@a.mrcs 1 10000
1@b.mrcs 2 10000
"""


def test_mixed_box_sizes_across_optics_groups(tmp_path):
    """Groups of another box are resampled onto the first group's (tests/test_optics_boxes.py):
    here 128 px of 1 Å, twice the 64 Å field of view, are cropped to the central 64 px."""
    ps = read_particles(_write(tmp_path / "mixed.star", MIXED_BOX))
    assert ps.box_size == 64
    sampling = ps.optics_groups[1].sampling
    assert (sampling.crop_box, sampling.image_pixel_angstrom) == (64, 1.0)
    assert ps.optics_groups[0].sampling is None


def test_particle_in_unknown_optics_group(tmp_path):
    path = _write(tmp_path / "g.star", MIXED_BOX.replace("2 1.0 128", "3 1.0 64"))
    with pytest.raises(CryogradError, match="rlnOpticsGroup"):
        read_particles(path)


def test_bad_random_subset(tmp_path):
    text = MIXED_BOX.replace("128", "64").replace(
        "_rlnDefocusU\n", "_rlnDefocusU\n_rlnRandomSubset\n"
    )
    text = text.replace("1@a.mrcs 1 10000", "1@a.mrcs 1 10000 1").replace(
        "1@b.mrcs 2 10000", "1@b.mrcs 2 10000 3"
    )
    with pytest.raises(CryogradError, match="row 2, column rlnRandomSubset"):
        read_particles(_write(tmp_path / "h.star", text))


def test_missing_file(tmp_path):
    with pytest.raises(CryogradError, match="not found"):
        read_particles(tmp_path / "nope.star")


# ---------------------------------------------------------------------- writing
def _assert_same(a: ParticleSet, b: ParticleSet, atol=1e-6):
    """Same metadata to float32 precision (values that were float32 are written as such)."""
    assert len(a) == len(b) and a.box_size == b.box_size
    np.testing.assert_array_equal(
        a.pixel_sizes_angstrom.astype(np.float32), b.pixel_sizes_angstrom.astype(np.float32)
    )
    np.testing.assert_allclose(a.rotations, b.rotations, atol=atol)
    np.testing.assert_allclose(a.shifts_px, b.shifts_px, atol=atol)
    np.testing.assert_allclose(a.ctf, b.ctf, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(a.ctf.astype(np.float32), b.ctf.astype(np.float32))


def test_write_star_round_trip_relion31(tmp_path):
    src = read_particles(shared_file("cryodrgn/relion31.star"))
    out = write_star(tmp_path / "out.star", src)
    text = out.read_text()
    assert "# version 30001" in text
    assert text.index("data_optics") < text.index("data_particles")
    raw = starfile.read(out, always_dict=True)  # an independent parser reads it
    assert raw["optics"]["rlnImagePixelSize"].iloc[0] == 2.806
    assert raw["optics"]["rlnImageSize"].iloc[0] == 256
    np.testing.assert_allclose(
        raw["particles"]["rlnOriginXAngst"], src.shifts_px[:, 0] * 2.806, atol=1e-8
    )
    back = read_particles(out)
    _assert_same(src, back)
    np.testing.assert_array_equal(back.half_set, src.half_set)
    # image names now relative to the output folder, same files, same images
    assert [p.resolve() for p in back.stack_files] == [p.resolve() for p in src.stack_files]
    np.testing.assert_array_equal(back.images([0, 4]), src.images([0, 4]))
    assert not list(tmp_path.glob(".*tmp*"))


def test_write_star_six_groups_and_30_file(tmp_path):
    for name in ("cryodrgn/relion31.6opticsgroups.star", "aspire/sample_particles_relion30.star"):
        src = read_particles(shared_file(name))
        back = read_particles(write_star(tmp_path / "o.star", src))
        _assert_same(src, back)
        np.testing.assert_array_equal(back.optics_group, src.optics_group)


def test_write_star_rotations_any_angles(tmp_path):
    rng = np.random.default_rng(0)
    rot = Rotation.random(200, random_state=1).as_matrix()
    rot[:3] = _zyz_reference(
        np.array([10.0, 0, 5]), np.array([0.0, 180.0, 0]), np.array([20.0, 7, 0])
    )
    ps = ParticleSet.from_arrays(
        rotations=rot, shifts_px=rng.normal(size=(200, 2)) * 5, pixel_size_angstrom=1.7, box_size=64
    )
    back = read_particles(write_star(tmp_path / "r.star", ps))
    np.testing.assert_allclose(back.rotations, rot, atol=1e-8)
    np.testing.assert_allclose(back.shifts_px, ps.shifts_px, atol=1e-8)


def test_write_star_is_atomic(tmp_path):
    ps = ParticleSet.from_arrays(rotations=np.eye(3)[None], pixel_size_angstrom=1.0, box_size=8)
    ps.box_size = None  # cannot write rlnImageSize
    target = tmp_path / "x.star"
    target.write_text("old")
    with pytest.raises(CryogradError):
        write_star(target, ps)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.star"]


def test_large_star_opens_fast(tmp_path):
    n = 200_000
    rng = np.random.default_rng(1)
    rot = rng.uniform(-180, 180, n)
    lines = [
        "# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n"
        "_rlnImageSize\n"
        "_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n1 1.1 128 300 2.7 0.1\n\n"
        "data_particles\n\nloop_\n_rlnImageName\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n"
        "_rlnOriginXAngst\n_rlnOriginYAngst\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n"
        "_rlnOpticsGroup\n_rlnRandomSubset\n"
    ]
    stack = np.arange(n) // 500
    body = "\n".join(
        f"{i % 500 + 1:06d}@Extract/mic{s:05d}.mrcs {r:.4f} 45.0 10.0 1.5 -2.0 15000 14000 30 1 "
        f"{i % 2 + 1}"
        for i, (s, r) in enumerate(zip(stack, rot))
    )
    path = tmp_path / "big.star"
    path.write_text(lines[0] + body + "\n")
    t0 = time.perf_counter()
    ps = read_particles(path)
    elapsed = time.perf_counter() - t0
    assert len(ps) == n and len(ps.stack_files) == n // 500
    assert elapsed < 20.0, elapsed
    np.testing.assert_allclose(ps.shifts_px[0], [1.5 / 1.1, -2.0 / 1.1])
    # metadata only: a few hundred bytes per particle at most
    nbytes = sum(
        a.nbytes
        for a in (
            ps.rotations,
            ps.shifts_px,
            ps.ctf,
            ps.stack_ids,
            ps.stack_indices,
            ps.optics_group,
            ps.half_set,
        )
    )
    assert nbytes < 200 * n


# ---------------------------------------------------------------------- every STAR file covered
# starfile's own test files that hold particle rows (rlnImageName) but no pixel size at all:
# (file, rows in the first particle block, number of particle blocks)
STARFILE_PARTICLE_ROWS = [
    ("starfile/rln3.1_data_style.star", 2, 2),
    ("starfile/single_line_end_of_multiblock.star", 2, 2),
    ("starfile/single_line_middle_of_multiblock.star", 1, 2),
]
NON_PARTICLE_MORE = [
    "starfile/basic_double_quote.star",
    "starfile/basic_single_quote.star",
    "starfile/empty_loop.star",
    "starfile/loop_double_quote.star",
    "starfile/loop_single_quote.star",
    "starfile/two_basic_blocks.star",
    "starfile/two_single_line_loop_blocks.star",
    "starfile/relion_tutorial/run_it025_optimiser_2D.star",
    "starfile/relion_tutorial/run_it025_optimiser_3D.star",
    "starfile/relion_tutorial/run_it025_sampling_2D.star",
]


def test_every_star_file_in_shared_data_is_classified(shared_data):
    listed = (
        {name for name, *_ in PARTICLE_STARS}
        | set(NON_PARTICLE)
        | set(NON_PARTICLE_MORE)
        | {name for name, *_ in STARFILE_PARTICLE_ROWS}
    )
    found = {p.relative_to(shared_data).as_posix() for p in shared_data.rglob("*.star")}
    assert found - listed == set(), "STAR files no test reads"


@pytest.mark.parametrize("name", NON_PARTICLE_MORE)
def test_more_non_particle_stars_fail_naming_file(name):
    path = shared_file(name)
    with pytest.raises(CryogradError, match="no particle table") as info:
        read_particles(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name,rows,blocks", STARFILE_PARTICLE_ROWS)
def test_particle_rows_without_pixel_size(name, rows, blocks):
    path = shared_file(name)
    with pytest.raises(CryogradError, match="--angpix") as info:
        read_particles(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    ps = read_particles(path, angpix=1.04)
    raw = starfile.read(path, always_dict=True)
    tables = [df for df in raw.values() if "rlnImageName" in getattr(df, "columns", [])]
    assert len(tables) == blocks and len(ps) == len(tables[0]) == rows
    assert ps.pixel_size_angstrom == 1.04 and ps.box_size is None
    assert ps.rotations is None and ps.shifts_px is None and ps.ctf is None
    # 000001@0001_sum_particles.mrcs: first image of that stack, next to the STAR file
    assert ps.stack_files[0] == path.parent / "0001_sum_particles.mrcs"
    np.testing.assert_array_equal(ps.stack_indices, np.zeros(rows))
    if blocks > 1:
        assert any("also hold particles" in n for n in ps.notes)


# ---------------------------------------------------------------------- what RELION 3.1 reads
OPTICS_REQUIRED = {  # RELION 3.1's ObservationModel needs these (plus the ones cryograd uses)
    "rlnOpticsGroup",
    "rlnOpticsGroupName",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnCtfDataAreCtfPremultiplied",
}


def _check_relion31_layout(path):
    """The written file as RELION 3.1 expects it, read with starfile and as plain text."""
    import re

    text = path.read_text()
    lines = text.splitlines()
    blocks = [i for i, line in enumerate(lines) if line.startswith("data_")]
    assert [lines[i] for i in blocks] == ["data_optics", "data_particles"]
    for i in blocks:  # each block preceded by the version line RELION writes
        assert "# version 30001" in lines[max(0, i - 3) : i]
    raw = starfile.read(path, always_dict=True)
    assert list(raw) == ["optics", "particles"]
    optics, parts = raw["optics"], raw["particles"]
    assert OPTICS_REQUIRED <= set(optics.columns)
    assert set(parts["rlnOpticsGroup"]) <= set(optics["rlnOpticsGroup"])
    assert (optics["rlnImageDimensionality"] == 2).all()
    assert "rlnOriginX" not in parts.columns and "rlnOriginY" not in parts.columns
    if "rlnImageName" in parts.columns:
        assert all(re.fullmatch(r"\d{6,}@\S+", s) for s in parts["rlnImageName"])
    return optics, parts


def test_written_star_is_relion31(tmp_path):
    src_path = shared_file("cryodrgn/relion31.6opticsgroups.star")
    src_raw = starfile.read(src_path, always_dict=True)
    ps = read_particles(src_path)
    out = write_star(tmp_path / "six.star", ps)
    optics, parts = _check_relion31_layout(out)
    merged = src_raw["particles"].merge(src_raw["optics"], on="rlnOpticsGroup", how="left")
    # values against starfile's reading of the source, not against cryograd's
    np.testing.assert_allclose(
        parts["rlnOriginXAngst"], src_raw["particles"]["rlnOriginXAngst"], atol=1e-9
    )
    np.testing.assert_allclose(parts["rlnDefocusU"], src_raw["particles"]["rlnDefocusU"])
    np.testing.assert_array_equal(parts["rlnRandomSubset"], src_raw["particles"]["rlnRandomSubset"])
    np.testing.assert_array_equal(parts["rlnOpticsGroup"], src_raw["particles"]["rlnOpticsGroup"])
    by_group = optics.set_index("rlnOpticsGroup")
    np.testing.assert_allclose(
        by_group.loc[parts["rlnOpticsGroup"], "rlnImagePixelSize"], merged["rlnImagePixelSize"]
    )
    np.testing.assert_allclose(
        by_group.loc[parts["rlnOpticsGroup"], "rlnSphericalAberration"],
        merged["rlnSphericalAberration"],
    )
    # beam tilt, aberrations and magnification matrix copied through per group
    src_optics = src_raw["optics"].set_index("rlnOpticsGroup")
    for c in ("rlnBeamTiltX", "rlnMagMat00", "rlnOddZernike", "rlnMicrographPixelSize"):
        assert list(by_group[c]) == list(src_optics.loc[by_group.index, c]), c
    # image names: the source's own NNNNNN@ numbers, stack paths absolute (outside tmp_path)
    src_names = src_raw["particles"]["rlnImageName"]
    assert [int(s.split("@")[0]) for s in parts["rlnImageName"]] == [
        int(s.split("@")[0]) for s in src_names
    ]
    assert all(s.split("@")[1].startswith("/") for s in parts["rlnImageName"])
    assert all(
        s.split("@")[1] == str(src_path.parent / t.split("@")[1])
        for s, t in zip(parts["rlnImageName"], src_names)
    )


def test_written_star_without_ctf_still_has_optics_voltage(tmp_path):
    ps = ParticleSet.from_arrays(
        rotations=np.stack([np.eye(3)] * 3),
        pixel_size_angstrom=2.5,
        box_size=32,
        half_set=np.array([1, 2, 1]),
    )
    optics, parts = _check_relion31_layout(write_star(tmp_path / "n.star", ps))
    assert optics["rlnVoltage"].iloc[0] == 300 and optics["rlnSphericalAberration"].iloc[0] == 2.7
    assert optics["rlnImagePixelSize"].iloc[0] == 2.5 and optics["rlnImageSize"].iloc[0] == 32
    assert list(parts["rlnRandomSubset"]) == [1, 2, 1]
    assert "rlnDefocusU" not in parts.columns
    assert read_particles(tmp_path / "n.star").ctf is None  # still no CTF when read back
    # a source optics table's voltage and Cs are kept when there is no defocus
    src = read_particles(shared_file("aspire/rln_proj_64_centered.star"))
    optics, _ = _check_relion31_layout(write_star(tmp_path / "c.star", src))
    raw = starfile.read(shared_file("aspire/rln_proj_64_centered.star"), always_dict=True)
    assert optics["rlnVoltage"].iloc[0] == raw["optics"]["rlnVoltage"].iloc[0]
    assert (
        optics["rlnSphericalAberration"].iloc[0] == raw["optics"]["rlnSphericalAberration"].iloc[0]
    )


def test_image_names_relative_inside_folder_absolute_outside(tmp_path):
    import shutil

    shutil.copy(shared_file("cryodrgn/relion31.mrcs"), tmp_path / "relion31.mrcs")
    (tmp_path / "in.star").write_text(shared_file("cryodrgn/relion31.star").read_text())
    ps = read_particles(tmp_path / "in.star")
    _, parts = _check_relion31_layout(write_star(tmp_path / "same.star", ps))
    assert list(parts["rlnImageName"]) == [f"{i:06d}@relion31.mrcs" for i in range(1, 6)]
    (tmp_path / "sub").mkdir()
    _, parts = _check_relion31_layout(write_star(tmp_path / "sub" / "deeper.star", ps))
    expected = str((tmp_path / "relion31.mrcs").absolute())
    assert list(parts["rlnImageName"]) == [f"{i:06d}@{expected}" for i in range(1, 6)]
    np.testing.assert_array_equal(
        read_particles(tmp_path / "sub" / "deeper.star").images([2]), ps.images([2])
    )


def test_uninterpreted_columns_passed_on(tmp_path):
    """3.0 -> 3.1 keeps micrograph names, coordinates and groups (RELION's polishing, CTF
    refinement and re-extraction need them), row for row, also through a subset."""
    src_path = shared_file("cryodrgn/sta_testing_bin8.star")
    src = starfile.read(src_path)
    ps = read_particles(src_path)
    out = write_star(tmp_path / "s.star", ps)
    _, parts = _check_relion31_layout(out)
    for c in ("rlnMicrographName", "rlnGroupName"):
        assert list(parts[c]) == list(src[c]), c
    np.testing.assert_allclose(parts["rlnCoordinateX"], src["rlnCoordinateX"], rtol=1e-7)
    # 3.0-only columns are not copied (pixel size now lives in data_optics)
    assert "rlnMagnification" not in parts.columns and "rlnDetectorPixelSize" not in parts.columns
    rows = np.array([218, 3, 100])
    _, sub = _check_relion31_layout(write_star(tmp_path / "sub.star", ps.subset(rows)))
    assert list(sub["rlnMicrographName"]) == list(src["rlnMicrographName"].iloc[rows])
    np.testing.assert_allclose(sub["rlnDefocusU"], src["rlnDefocusU"].iloc[rows])


def test_write_star_rejects_image_names_with_spaces(tmp_path):
    ps = ParticleSet.from_arrays(
        rotations=np.stack([np.eye(3)] * 2), pixel_size_angstrom=1.0, box_size=8
    )
    with pytest.raises(CryogradError, match="particle 2"):
        write_star(tmp_path / "x.star", ps, image_names=["000001@a.mrcs", "000002@a b.mrcs"])
    assert list(tmp_path.iterdir()) == []
    write_star(tmp_path / "x.star", ps, image_names=["000001@a.mrcs", "000002@a.mrcs"])
    assert list(starfile.read(tmp_path / "x.star")["particles"]["rlnImageName"]) == [
        "000001@a.mrcs",
        "000002@a.mrcs",
    ]


def test_malformed_sample_star_names_the_line():
    # aspire/sample.star: line 20 ("Mars 6794 0.38 2 extra") has 5 values in a 4-column loop
    path = shared_file("aspire/sample.star")
    assert path.read_text().splitlines()[19].split() == ["Mars", "6794", "0.38", "2", "extra"]
    with pytest.raises(CryogradError, match="line 20 has 5 values but its loop_ has 4 columns"):
        read_particles(path)
