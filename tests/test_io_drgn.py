"""cryoDRGN pkl files: our readings of STAR/.cs files against cryoDRGN's own, and writing back.

Finding (checked numerically below): for both reference pairs -- pose.star.pkl (from the PfCRT
RELION 3.0 STAR) and pose.cs.pkl (from the cryoSPARC P12 .cs) -- cryoDRGN's rotation is RELION's
``A`` itself, not its transpose, and its translation is ``origin_px / box`` with RELION's sign.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cryograd.errors import CryogradError
from cryograd.io.drgn import read_drgn, read_drgn_ctf, read_drgn_poses, write_drgn
from cryograd.io.registry import read_particles
from tests.conftest import shared_file

PAIRS = [
    # (metadata, pose pkl, ctf pkl, box)
    (
        "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star",
        "cryodrgn/pose.star.pkl",
        "cryodrgn/ctf1.pkl",
        300,
    ),
    (
        "cryodrgn/cryosparc_P12_J24_001_particles.cs",
        "cryodrgn/pose.cs.pkl",
        "cryodrgn/ctf2.pkl",
        180,
    ),
]


def _load(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


@pytest.mark.parametrize("meta,pose,ctf,box", PAIRS)
def test_matches_cryodrgn_parse(meta, pose, ctf, box):
    ps = read_particles(shared_file(meta), box_size=box)
    rot_ref, trans_ref = _load(shared_file(pose))
    ctf_ref = _load(shared_file(ctf))
    assert ps.box_size == box
    # rotations: A itself (the transpose is far off)
    assert np.abs(ps.rotations - rot_ref).max() < 1e-5
    assert np.abs(ps.rotations.transpose(0, 2, 1) - rot_ref).max() > 0.1
    # translations within 1e-4 of the box
    assert np.abs(ps.shifts_px / box - trans_ref).max() < 1e-4
    # CTF values equal (cryoDRGN stores float32)
    ours = np.stack(
        [np.full(len(ps), box), ps.pixel_sizes_angstrom, *ps.ctf[:, :7].T], axis=1
    ).astype(np.float32)
    np.testing.assert_array_equal(ours, ctf_ref)


def test_sta_tilt_series_rotations_match():
    ps = read_particles(shared_file("cryodrgn/sta_testing_bin8.star"))
    rot_ref, _ = _load(shared_file("cryodrgn/sta_pose.pkl"))
    assert np.abs(ps.rotations - rot_ref).max() < 1e-5


def test_readers_give_reference_layout():
    rot, trans = read_drgn_poses(shared_file("cryodrgn/pose.star.pkl"))
    assert rot.shape == (5, 3, 3) and trans.shape == (5, 2)
    table = read_drgn_ctf(shared_file("cryodrgn/ctf1.pkl"))
    assert table.shape == (5, 9) and table[0, 0] == 300
    rot_only, none = read_drgn_poses(shared_file("cryodrgn/hand_rot.pkl"))
    assert rot_only.ndim == 3 and none is None


def test_read_drgn_pair():
    ps = read_drgn(shared_file("cryodrgn/pose.cs.pkl"), shared_file("cryodrgn/ctf2.pkl"))
    rot_ref, trans_ref = _load(shared_file("cryodrgn/pose.cs.pkl"))
    ctf_ref = _load(shared_file("cryodrgn/ctf2.pkl"))
    assert ps.box_size == 180 and ps.pixel_size_angstrom == pytest.approx(2.95, abs=1e-6)
    np.testing.assert_allclose(ps.rotations, rot_ref)
    np.testing.assert_allclose(ps.shifts_px, trans_ref.astype(np.float64) * 180)
    np.testing.assert_allclose(ps.ctf[:, :7], ctf_ref[:, 2:9].astype(np.float64))


def test_write_drgn_reproduces_cryodrgn_files(tmp_path):
    ps = read_particles(
        shared_file("cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star"), box_size=300
    )
    write_drgn(tmp_path / "p.pkl", tmp_path / "c.pkl", ps)
    rot, trans = _load(tmp_path / "p.pkl")
    rot_ref, trans_ref = _load(shared_file("cryodrgn/pose.star.pkl"))
    np.testing.assert_allclose(rot, rot_ref, atol=1e-6)
    np.testing.assert_allclose(trans, trans_ref, atol=1e-6)
    table = _load(tmp_path / "c.pkl")
    assert table.dtype == np.float32 and table.shape == (5, 9)
    np.testing.assert_array_equal(table, _load(shared_file("cryodrgn/ctf1.pkl")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pkl", "p.pkl"]


def test_write_drgn_without_needed_fields(tmp_path):
    ps = read_particles(shared_file("cryodrgn/empiar_10076_7.star"))  # CTF, no poses
    with pytest.raises(CryogradError, match="no poses"):
        write_drgn(tmp_path / "p.pkl", tmp_path / "c.pkl", ps)
    assert list(tmp_path.iterdir()) == []
    ps = read_particles(shared_file("cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star"))
    with pytest.raises(CryogradError, match="box size unknown"):
        write_drgn(tmp_path / "p.pkl", None, ps)


def test_bad_pickles(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(print))
    with pytest.raises(CryogradError, match="evil.pkl"):
        read_drgn_poses(evil)
    shape = tmp_path / "shape.pkl"
    shape.write_bytes(pickle.dumps(np.zeros((4, 3))))
    with pytest.raises(CryogradError, match="expected \\(n, 3, 3\\)"):
        read_drgn_poses(shape)
    with pytest.raises(CryogradError, match="expected \\(n, 9\\)"):
        read_drgn_ctf(shape)
    nan = tmp_path / "nan.pkl"
    a = np.zeros((2, 9))
    a[1, 3] = np.inf
    nan.write_bytes(pickle.dumps(a))
    with pytest.raises(CryogradError, match="row 2"):
        read_drgn_ctf(nan)
    with pytest.raises(CryogradError, match="has 5 particles"):
        read_drgn(shared_file("cryodrgn/pose.cs.pkl"), shared_file("cryodrgn/ctf1.pkl"))
