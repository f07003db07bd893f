"""cryoSPARC .cs reading: poses, shifts, CTF, half sets, image paths, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryograd.errors import CryogradError
from cryograd.io.registry import read_particles
from tests.conftest import shared_file

CS_FILES = [  # (file, particles, pixel size Å, box) from PROVENANCE.md
    ("cryodrgn/cryosparc_P12_J24_001_particles.cs", 2019, 2.95, 180),
    ("cryodrgn/cryosparc_J2_particles_exported.cs", 22, 1.345, 300),
    ("cryodrgn/empiar_10076_7.cs", 7, 1.31, 320),
]


@pytest.mark.parametrize("name,count,pixel,box", CS_FILES)
def test_every_cs_reads(name, count, pixel, box):
    ps = read_particles(shared_file(name))
    assert len(ps) == count
    assert ps.pixel_size_angstrom == pytest.approx(pixel, abs=1e-3)
    assert ps.box_size == box
    assert ps.has_ctf


def test_p12_conventions_against_scipy_and_raw_fields():
    path = shared_file("cryodrgn/cryosparc_P12_J24_001_particles.cs")
    raw = np.load(path)
    ps = read_particles(path)
    pose = raw["alignments3D/pose"].astype(np.float64)
    np.testing.assert_allclose(
        ps.rotations, Rotation.from_rotvec(pose).as_matrix().transpose(0, 2, 1), atol=1e-12
    )
    np.testing.assert_array_equal(ps.shifts_px, raw["alignments3D/shift"].astype(np.float64))
    np.testing.assert_allclose(ps.ctf[:, 2], np.rad2deg(raw["ctf/df_angle_rad"].astype(np.float64)))
    np.testing.assert_array_equal(ps.ctf[:, 0], raw["ctf/df1_A"].astype(np.float64))
    np.testing.assert_array_equal(ps.ctf[:, 3], 200.0)
    np.testing.assert_array_equal(ps.half_set, raw["alignments3D/split"] + 1)
    assert set(np.unique(ps.half_set)) == {1, 2}
    assert ps.check_images() == ps.missing_stacks()  # images absent, reported


def test_alignments2d_only_has_no_3d_poses():
    ps = read_particles(shared_file("cryodrgn/cryosparc_J2_particles_exported.cs"))
    assert ps.rotations is None
    assert any("alignments2D" in n for n in ps.notes)


def test_blob_paths_with_particles_dir(tmp_path):
    cs = tmp_path / "x.cs"
    cs.write_bytes(shared_file("cryodrgn/empiar_10076_7.cs").read_bytes())
    ps = read_particles(cs)
    assert len(ps.missing_stacks()) == 1
    ps = read_particles(cs, datadir=shared_file("cryodrgn/empiar_10076_7.mrc").parent)
    assert ps.missing_stacks() == []
    np.testing.assert_array_equal(ps.stack_indices, np.load(cs)["blob/idx"])


def _save_cs(path, arr):
    with open(path, "wb") as fh:
        np.save(fh, arr)
    return path


def _tiny(n=3):
    dt = [
        ("blob/path", "S10"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/shift", "<f4", (2,)),
    ]
    a = np.zeros(n, dtype=dt)
    a["blob/path"] = b">s.mrcs"
    a["blob/idx"] = np.arange(n)
    a["blob/shape"] = 32
    a["blob/psize_A"] = 1.5
    return a


def test_leading_marker_stripped_from_blob_path(tmp_path):
    ps = read_particles(_save_cs(tmp_path / "t.cs", _tiny()))
    assert ps.stack_files[0].name == "s.mrcs"
    assert ps.ctf is None and ps.rotations.shape == (3, 3, 3)


def test_bad_cs_inputs(tmp_path):
    a = _tiny()
    a["alignments3D/pose"][1, 0] = np.nan
    with pytest.raises(CryogradError, match=r"row 2, field alignments3D/pose"):
        read_particles(_save_cs(tmp_path / "nan.cs", a))
    a = _tiny()
    a["blob/shape"][2] = (32, 40)
    with pytest.raises(CryogradError, match="not square"):
        read_particles(_save_cs(tmp_path / "rect.cs", a))
    text = tmp_path / "text.cs"
    text.write_text("not numpy")
    with pytest.raises(CryogradError, match="text.cs"):
        read_particles(text)
    plain = _save_cs(tmp_path / "plain.cs", np.zeros(4))
    with pytest.raises(CryogradError, match="structured"):
        read_particles(plain)


def test_class_numbers_from_one_as_relion():
    path = shared_file("cryodrgn/cryosparc_P12_J24_001_particles.cs")
    raw = np.load(path)
    ps = read_particles(path)
    np.testing.assert_array_equal(ps.class_number, raw["alignments3D/class"].astype(np.int64) + 1)
    assert ps.class_number.min() >= 1


def _with_fields(a: np.ndarray, fields: list[tuple[str, str]]) -> np.ndarray:
    """A copy of the record array ``a`` with extra (zeroed) fields."""
    full = np.zeros(len(a), dtype=a.dtype.descr + fields)
    for name in a.dtype.names:
        full[name] = a[name]
    return full


def test_pixel_size_per_exposure_group(tmp_path):
    full = _with_fields(_tiny(4), [("ctf/exp_group_id", "<u4")])
    full["ctf/exp_group_id"] = [3, 3, 7, 7]
    full["blob/psize_A"] = [1.5, 1.5, 1.25, 1.25]
    ps = read_particles(_save_cs(tmp_path / "g.cs", full))
    assert [g.name for g in ps.optics_groups] == ["exp_group_3", "exp_group_7"]
    np.testing.assert_allclose(ps.pixel_sizes_angstrom, [1.5, 1.5, 1.25, 1.25])
    full["blob/psize_A"] = [1.5, 1.4, 1.25, 1.25]  # two sizes inside one group
    with pytest.raises(CryogradError, match="exp_group_3 have different pixel sizes"):
        read_particles(_save_cs(tmp_path / "h.cs", full))


def test_micrograph_path_becomes_rlnmicrographname(tmp_path):
    import starfile

    from cryograd.io.star import write_star

    full = _with_fields(_tiny(3), [("location/micrograph_path", "S40")])
    full["location/micrograph_path"] = [
        b">J1/imported/mic_a.mrc",
        b"J1/imported/mic_b.mrc",
        b">J1/imported/mic_a.mrc",
    ]
    ps = read_particles(_save_cs(tmp_path / "m.cs", full))
    out = write_star(tmp_path / "m.star", ps)
    parts = starfile.read(out, always_dict=True)["particles"]
    assert list(parts["rlnMicrographName"]) == [
        "J1/imported/mic_a.mrc",
        "J1/imported/mic_b.mrc",
        "J1/imported/mic_a.mrc",
    ]
    sub = ps.subset([2, 1])
    assert list(sub.extra_columns["rlnMicrographName"]) == [
        "J1/imported/mic_a.mrc",
        "J1/imported/mic_b.mrc",
    ]


def test_box_size_per_exposure_group(tmp_path):
    """Exposure groups of another blob/shape are resampled onto the first group's box, as in
    RELION files (tests/test_optics_boxes.py): 40 px of 1.2 Å onto 32 px of 1.5 Å (same field of
    view, Fourier crop: 1.5 Å); their shifts stay the same in Å."""
    full = _with_fields(_tiny(4), [("ctf/exp_group_id", "<u4")])
    full["ctf/exp_group_id"] = [3, 3, 7, 7]
    full["blob/psize_A"] = [1.5, 1.5, 1.2, 1.2]
    full["blob/shape"] = [(32, 32), (32, 32), (40, 40), (40, 40)]
    full["alignments3D/shift"][:, 0] = [1.0, 2.0, 2.5, 5.0]  # px of each particle's own image
    ps = read_particles(_save_cs(tmp_path / "g.cs", full))
    assert ps.box_size == 32
    assert [g.box_size for g in ps.optics_groups] == [32, 40]
    np.testing.assert_allclose(ps.pixel_sizes_angstrom, [1.5, 1.5, 1.5, 1.5])
    np.testing.assert_allclose(
        np.abs(ps.shifts_angstrom[:, 0]), np.abs([1.0 * 1.5, 2.0 * 1.5, 2.5 * 1.2, 5.0 * 1.2])
    )
    full["blob/shape"][1] = (40, 40)  # two boxes inside one group
    with pytest.raises(CryogradError, match="exp_group_3 have different box sizes"):
        read_particles(_save_cs(tmp_path / "h.cs", full))
