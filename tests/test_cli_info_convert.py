"""``cryograd info`` and ``cryograd convert`` end to end, including bad input (exit 2, one line)."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from cryograd.cli.main import main
from cryograd.io.drgn import read_drgn
from cryograd.io.registry import read_particles
from tests.conftest import shared_file


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_star_text_and_json(capsys):
    path = shared_file("cryodrgn/relion31.star")
    code, out, err = _run(capsys, "info", path)
    assert code == 0
    assert "particles: 5" in out and "box size: 256 px" in out and "pixel size: 2.806 A" in out
    assert "present: poses, shifts, CTF, half sets" in out and "absent: none" in out
    assert "half sets: 5 + 0" in out  # rlnRandomSubset is 1 for all five rows
    assert "images: 5 particles in 1 stack files, all present" in out
    code, out, _ = _run(capsys, "info", path, "--json")
    s = json.loads(out)
    assert s["particles"] == 5 and s["box_size"] == 256 and s["pixel_size_angstrom"] == 2.806
    assert s["poses"] and s["shifts"] and s["ctf"] and s["half_sets"]
    assert s["images"]["missing_stack_files"] == 0
    lo, hi = s["defocus_range_angstrom"]
    assert lo < hi and 1e4 < lo


def test_info_reports_missing_images_without_failing(capsys):
    code, out, _ = _run(
        capsys, "info", shared_file("cryodrgn/relion31.6opticsgroups.star"), "--json"
    )
    assert code == 0
    s = json.loads(out)
    assert s["particles"] == 139 and len(s["optics_groups"]) == 6
    assert s["images"]["missing_stack_files"] == 139


def test_info_cs_and_mrc(capsys):
    code, out, _ = _run(
        capsys, "info", shared_file("cryodrgn/cryosparc_P12_J24_001_particles.cs"), "--json"
    )
    s = json.loads(out)
    assert code == 0 and s["particles"] == 2019 and s["box_size"] == 180
    code, out, _ = _run(capsys, "info", shared_file("mrcfile/EMD-3197.map"), "--json")
    s = json.loads(out)
    assert code == 0 and s["shape"] == [20, 20, 20]
    assert s["voxel_size_angstrom"] == pytest.approx(11.4, abs=1e-4)
    code, out, _ = _run(capsys, "info", shared_file("cryodrgn/empiar_10076_7.mrc"))
    assert code == 0 and "shape (z, y, x): (7, 320, 320)" in out
    assert "voxel size: not set in the header" in out  # its header voxel is 0
    code, out, _ = _run(capsys, "info", shared_file("cryodrgn/hand.mrcs"))
    assert "format: MRC stack" in out and "100 images of 64 x 64 px" in out
    code, out, _ = _run(capsys, "info", shared_file("mrcfile/EMD-3001.map"))
    assert "73 x 43 x 25 voxels" in out and "anisotropic" in out
    # a 30^3 volume whose header says ispg 0 (stack) is shown as a map
    code, out, _ = _run(capsys, "info", shared_file("cryodrgn/toymodel_small_nocenter.mrc"))
    assert "format: MRC map" in out and "30 x 30 x 30 voxels" in out


def test_info_text_mixed_pixel_sizes_and_unknown_box(capsys):
    code, out, _ = _run(capsys, "info", shared_file("cryodrgn/relion31.6opticsgroups.star"))
    assert code == 0 and "pixel size: 1.24 to 1.25 A (per optics group)" in out
    assert "139 missing (139 particles)" in out and "... and 134 more" in out
    star = shared_file("cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    code, out, _ = _run(capsys, "info", star)
    assert code == 0 and "box size: unknown" in out and "box unknown" in out
    assert "half sets: 1 + 4" in out and "pixel size: 1.035 A" in out


def test_info_angpix_flag_for_unknown_pixel(capsys):
    path = shared_file("aspire/rln_proj_65.star")
    code, out, err = _run(capsys, "info", path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--angpix" in err and str(path) in err
    code, out, _ = _run(capsys, "info", path, "--angpix", "5", "--json")
    assert code == 0 and json.loads(out)["pixel_size_angstrom"] == 5.0


def test_convert_cs_to_star_round_trip(tmp_path, capsys):
    src = shared_file("cryodrgn/cryosparc_P12_J24_001_particles.cs")
    out = tmp_path / "p.star"
    code, _, err = _run(capsys, "convert", src, out, "--particles-dir", tmp_path)
    assert code == 0, err
    a, b = read_particles(src), read_particles(out)
    raw = np.load(src)
    assert len(b) == 2019 and b.box_size == 180
    # the .cs holds float32: the STAR holds the same float32 values (shortest decimals)
    assert np.float32(b.pixel_size_angstrom) == raw["blob/psize_A"][0]
    assert "2.95 180 2 0" in out.read_text()  # not 2.950000048
    np.testing.assert_allclose(b.rotations, a.rotations, atol=1e-8)
    np.testing.assert_allclose(b.shifts_px, a.shifts_px, atol=1e-6)
    np.testing.assert_array_equal(b.shifts_px.astype(np.float32), raw["alignments3D/shift"])
    np.testing.assert_allclose(b.ctf, a.ctf, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(b.ctf[:, 0].astype(np.float32), raw["ctf/df1_A"])
    np.testing.assert_array_equal(b.ctf[:, 1].astype(np.float32), raw["ctf/df2_A"])
    np.testing.assert_array_equal(b.ctf[:, 4].astype(np.float32), raw["ctf/cs_mm"])
    np.testing.assert_array_equal(b.half_set, raw["alignments3D/split"] + 1)
    names_a = [a.stack_files[i].name for i in a.stack_ids]
    assert [b.stack_files[i].name for i in b.stack_ids] == names_a
    np.testing.assert_array_equal(b.stack_indices, a.stack_indices)


def test_convert_cs_with_images_and_star30(tmp_path, capsys):
    shutil.copy(shared_file("cryodrgn/empiar_10076_7.cs"), tmp_path / "e.cs")
    code, _, err = _run(
        capsys,
        "convert",
        tmp_path / "e.cs",
        tmp_path / "out" / "e.star",
        "--particles-dir",
        shared_file("cryodrgn/empiar_10076_7.mrc").parent,
    )
    assert code == 2 and "out" in err  # missing output folder is a user error too
    (tmp_path / "out").mkdir()
    code, _, err = _run(
        capsys,
        "convert",
        tmp_path / "e.cs",
        tmp_path / "out" / "e.star",
        "--particles-dir",
        shared_file("cryodrgn/empiar_10076_7.mrc").parent,
    )
    assert code == 0, err
    back = read_particles(tmp_path / "out" / "e.star")
    ref = read_particles(shared_file("cryodrgn/empiar_10076_7.star"))
    np.testing.assert_array_equal(back.images([0, 6]), ref.images([0, 6]))
    np.testing.assert_allclose(back.ctf[:, :2], ref.ctf[:, :2], rtol=1e-6)
    # RELION 3.0 STAR -> 3.1
    code, _, err = _run(
        capsys,
        "convert",
        shared_file("aspire/sample_particles_relion30.star"),
        tmp_path / "s31.star",
    )
    assert code == 0, err
    a, b = (
        read_particles(shared_file("aspire/sample_particles_relion30.star")),
        read_particles(tmp_path / "s31.star"),
    )
    np.testing.assert_allclose(b.rotations, a.rotations, atol=1e-8)
    np.testing.assert_allclose(b.shifts_px, a.shifts_px, atol=1e-8)
    np.testing.assert_allclose(b.ctf, a.ctf, rtol=1e-7)
    np.testing.assert_array_equal(b.ctf.astype(np.float32), a.ctf.astype(np.float32))
    np.testing.assert_array_equal(b.images([0, 16]), a.images([0, 16]))


def test_convert_drgn_pair_to_star(tmp_path, capsys):
    poses, ctf = shared_file("cryodrgn/pose.star.pkl"), shared_file("cryodrgn/ctf1.pkl")
    out = tmp_path / "d.star"
    code, _, err = _run(capsys, "convert", "--poses", poses, "--ctf", ctf, out)
    assert code == 0, err
    back = read_particles(out)
    with open(poses, "rb") as fh:
        rot_ref, trans_ref = pickle.load(fh)
    with open(ctf, "rb") as fh:
        ctf_ref = pickle.load(fh)
    assert back.box_size == 300 and back.pixel_size_angstrom == pytest.approx(1.035, abs=1e-6)
    np.testing.assert_allclose(back.rotations, rot_ref, atol=1e-7)
    np.testing.assert_allclose(back.shifts_px, trans_ref * 300, atol=1e-7)
    np.testing.assert_allclose(back.ctf[:, :7], ctf_ref[:, 2:].astype(np.float64), rtol=1e-7)


def test_convert_star_to_drgn(tmp_path, capsys):
    star = shared_file("cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    out = tmp_path / "poses.pkl"
    code, _, err = _run(capsys, "convert", star, out)
    assert code == 2 and "box size unknown" in err and not out.exists()
    code, _, err = _run(capsys, "convert", star, out, "--box", "300")
    assert code == 0, err
    ctf_out = tmp_path / "poses_ctf.pkl"
    with open(ctf_out, "rb") as fh:
        table = pickle.load(fh)
    with open(shared_file("cryodrgn/ctf1.pkl"), "rb") as fh:
        np.testing.assert_array_equal(table, pickle.load(fh))
    back = read_drgn(out, ctf_out)
    ref = read_particles(star)
    np.testing.assert_allclose(back.rotations, ref.rotations, atol=1e-12)
    np.testing.assert_allclose(back.shifts_px, ref.shifts_px, atol=1e-12)
    # --to-drgn with an explicit CTF name
    code, _, err = _run(
        capsys,
        "convert",
        shared_file("cryodrgn/cryosparc_P12_J24_001_particles.cs"),
        tmp_path / "cs.out",
        "--to-drgn",
        "--ctf-out",
        tmp_path / "cs_ctf.pkl",
    )
    assert code == 0, err
    with open(tmp_path / "cs_ctf.pkl", "rb") as fh:
        table = pickle.load(fh)
    with open(shared_file("cryodrgn/ctf2.pkl"), "rb") as fh:
        np.testing.assert_array_equal(table, pickle.load(fh))


def _expect_error(capsys, tmp_path, *argv, match=None):
    before = set(tmp_path.rglob("*"))
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("cryograd: error: ") and err.count("\n") == 1, err
    if match:
        assert match in err, err
    assert set(tmp_path.rglob("*")) == before  # no output written
    return err


def test_convert_bad_inputs_exit_2_no_output(tmp_path, capsys):
    out = tmp_path / "o.star"
    _expect_error(capsys, tmp_path, "convert", tmp_path / "missing.star", out, match="not found")
    # image index beyond the stack
    shutil.copy(shared_file("cryodrgn/relion31.mrcs"), tmp_path / "relion31.mrcs")
    text = shared_file("cryodrgn/relion31.star").read_text()
    (tmp_path / "idx.star").write_text(text.replace("000005@relion31.mrcs", "000009@relion31.mrcs"))
    _expect_error(capsys, tmp_path, "convert", tmp_path / "idx.star", out, match="row 5")
    # stack box differs from rlnImageSize
    (tmp_path / "box.star").write_text(text.replace("   256            2", "   128            2"))
    _expect_error(capsys, tmp_path, "convert", tmp_path / "box.star", out, match="rlnImageSize")
    # NaN metadata
    bad = text.replace("000002@relion31.mrcs", "000002@relion31.mrcs", 1)
    lines = bad.splitlines()
    row = next(i for i, line in enumerate(lines) if "000003@relion31.mrcs" in line)
    fields = lines[row].split()
    fields[6] = "nan"  # rlnDefocusU
    lines[row] = " ".join(fields)
    (tmp_path / "nan.star").write_text("\n".join(lines) + "\n")
    _expect_error(
        capsys, tmp_path, "convert", tmp_path / "nan.star", out, match="row 3, column rlnDefocusU"
    )
    # unknown pixel size
    _expect_error(
        capsys, tmp_path, "convert", shared_file("aspire/rln_proj_65.star"), out, match="--angpix"
    )
    # non-particle and malformed STAR
    _expect_error(
        capsys,
        tmp_path,
        "convert",
        shared_file("starfile/postprocess.star"),
        out,
        match="no particle table",
    )
    _expect_error(
        capsys, tmp_path, "convert", shared_file("aspire/sample.star"), out, match="malformed"
    )
    # truncated MRC via info
    data = shared_file("mrcfile/EMD-3197.map").read_bytes()
    (tmp_path / "t.mrc").write_bytes(data[:2000])
    _expect_error(capsys, tmp_path, "info", tmp_path / "t.mrc", match="t.mrc")
    # wrong output extension
    _expect_error(
        capsys,
        tmp_path,
        "convert",
        shared_file("cryodrgn/relion31.star"),
        tmp_path / "o.txt",
        match=".star or .pkl",
    )


def test_convert_drgn_pair_with_images(tmp_path, capsys):
    import mrcfile

    rng = np.random.default_rng(2)
    n, box = 4, 16
    imgs = rng.normal(size=(n, box, box)).astype(np.float32)
    with mrcfile.new(tmp_path / "s.mrcs") as mrc:
        mrc.set_data(imgs)
    rot = np.stack([np.eye(3)] * n)
    trans = rng.normal(size=(n, 2)) * 0.05
    ctf = np.tile(np.array([box, 2.0, 1e4, 1.1e4, 30, 300, 2.7, 0.1, 0], np.float32), (n, 1))
    (tmp_path / "p.pkl").write_bytes(pickle.dumps((rot, trans)))
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(ctf))
    args = ["convert", "--poses", tmp_path / "p.pkl", "--ctf", tmp_path / "c.pkl"]
    code, _, err = _run(capsys, *args, "--images", tmp_path / "s.mrcs", tmp_path / "o.star")
    assert code == 0, err
    back = read_particles(tmp_path / "o.star")
    np.testing.assert_array_equal(back.images(np.arange(n)), imgs)
    np.testing.assert_allclose(back.shifts_px, trans * box, atol=1e-8)
    # a stack whose box differs from D in the CTF pkl
    ctf[:, 0] = 32
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(ctf))
    _expect_error(
        capsys,
        tmp_path,
        *args,
        "--images",
        tmp_path / "s.mrcs",
        tmp_path / "x.star",
        match="differs",
    )
