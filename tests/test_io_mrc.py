"""MRC maps and stacks: voxel size, origin, permissive headers, bad files, atomic writing."""

from __future__ import annotations

import gzip
import warnings

import mrcfile
import numpy as np
import pytest

from cryograd.errors import CryogradError
from cryograd.io.mrc import StackWriter, read_map, read_map_header, write_map, write_stack
from tests.conftest import shared_file


def test_emd3197_voxel_and_origin():
    path = shared_file("mrcfile/EMD-3197.map")
    m = read_map(path)
    assert m.data.shape == (20, 20, 20) and m.data.dtype == np.float32
    assert m.voxel_size_angstrom == pytest.approx(11.4, abs=1e-4)
    with mrcfile.open(path) as mrc:
        start = (int(mrc.header.nxstart), int(mrc.header.nystart), int(mrc.header.nzstart))
        np.testing.assert_array_equal(m.data, mrc.data)
    assert start[0] == -2
    np.testing.assert_allclose(m.origin_angstrom, np.array(start) * 11.4, atol=1e-3)


def test_gzipped_map_equals_plain():
    plain = read_map(shared_file("mrcfile/EMD-3197.map"))
    gz = read_map(shared_file("mrcfile/emd_3197.map.gz"))
    np.testing.assert_array_equal(plain.data, gz.data)
    assert gz.voxel_size_angstrom == plain.voxel_size_angstrom


def test_anisotropic_crystallographic_map():
    m = read_map(shared_file("mrcfile/EMD-3001.map"))
    assert m.data.shape == (25, 43, 73)
    vx, vy, vz = m.header.voxel_size_xyz_angstrom
    assert vx == pytest.approx(0.448, abs=1e-3) and vz == pytest.approx(0.459, abs=1e-3)


def test_emd5168_nonzero_start():
    h = read_map_header(shared_file("tempy/emd_5168.map"))
    assert h.shape == (100, 100, 100)
    assert h.voxel_size_angstrom == pytest.approx(1.742, abs=1e-3)
    assert h.start_voxels[0] == -50


def test_permissive_header_relion31_stack():
    path = shared_file("cryodrgn/relion31.mrcs")
    m = read_map(path)
    assert m.header.permissive and m.header.is_stack
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as mrc:
            np.testing.assert_array_equal(m.data, mrc.data)


def test_voxel_zero_header():
    m = read_map(shared_file("aspire/clean70SRibosome_vol_65p.mrc"))
    assert m.data.shape == (65, 65, 65)
    assert m.voxel_size_angstrom == 0.0  # unknown: callers pass the pixel size


def test_truncated_map(tmp_path):
    src = shared_file("mrcfile/EMD-3197.map").read_bytes()
    bad = tmp_path / "trunc.mrc"
    bad.write_bytes(src[: len(src) - 1000])
    with pytest.raises(CryogradError) as e:
        read_map(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_not_mrc_and_missing(tmp_path):
    txt = tmp_path / "a.mrc"
    txt.write_text("hello, not a map\n" * 10)
    with pytest.raises(CryogradError, match="a.mrc"):
        read_map(txt)
    with pytest.raises(CryogradError, match="not found"):
        read_map(tmp_path / "nope.mrc")
    empty = tmp_path / "e.mrc"
    empty.write_bytes(b"")
    with pytest.raises(CryogradError, match="e.mrc"):
        read_map(empty)
    gz = tmp_path / "g.mrc.gz"
    gz.write_bytes(gzip.compress(b"x" * 100))
    with pytest.raises(CryogradError, match="g.mrc.gz"):
        read_map(gz)


def test_write_map_round_trip_and_atomic(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(6, 7, 8))
    out = write_map(tmp_path / "v.mrc", vol, 1.25, origin_angstrom=(1.0, 2.0, 3.0))
    with mrcfile.open(out) as mrc:  # independent reader
        assert mrc.data.dtype == np.float32
        np.testing.assert_allclose(mrc.data, vol.astype(np.float32))
        assert float(mrc.voxel_size.x) == pytest.approx(1.25)
        assert float(mrc.header.origin.z) == pytest.approx(3.0)
    m = read_map(out)
    assert m.origin_angstrom == (1.0, 2.0, 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mrc"]
    # a failing write leaves the old file alone and no temporary file behind
    with pytest.raises((TypeError, ValueError)):
        write_map(out, np.array([["a", "b"]], dtype=object), 1.0)
    np.testing.assert_allclose(read_map(out).data, vol.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mrc"]


def test_stack_writer_streams_batches(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(10, 12, 12)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    with StackWriter(path, 10, 12, 2.5) as w:
        assert not path.exists()
        for start in range(0, 10, 3):
            w.write(imgs[start : start + 3])
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack()
        np.testing.assert_array_equal(mrc.data, imgs)
        assert float(mrc.voxel_size.x) == pytest.approx(2.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mrcs"]


def test_stack_writer_deletes_on_exception_and_short_write(tmp_path):
    path = tmp_path / "s.mrcs"
    with pytest.raises(RuntimeError):
        with StackWriter(path, 4, 8, 1.0) as w:
            w.write(np.zeros((2, 8, 8)))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="only 2 of 4"):
        with StackWriter(path, 4, 8, 1.0) as w:
            w.write(np.zeros((2, 8, 8)))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        with StackWriter(path, 4, 8, 1.0) as w:
            w.write(np.zeros((2, 9, 9)))
    assert list(tmp_path.iterdir()) == []


def test_write_stack(tmp_path):
    imgs = np.arange(3 * 5 * 5, dtype=np.float32).reshape(3, 5, 5)
    path = write_stack(tmp_path / "w.mrcs", imgs, 3.0, batch_size=2)
    m = read_map(path)
    np.testing.assert_array_equal(m.data, imgs)
    assert m.voxel_size_angstrom == pytest.approx(3.0)
