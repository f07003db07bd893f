"""ParticleSet: lazy memory-mapped images, subsets, CTF parameters, arrays, bad image references."""

from __future__ import annotations

import shutil
import warnings

import mrcfile
import numpy as np
import pytest
import torch

from cryograd.ctf import CTFParams
from cryograd.errors import CryogradError
from cryograd.io.registry import read_particles
from cryograd.particles import ParticleSet
from tests.conftest import shared_file


def _mrc_reference(path) -> np.ndarray:
    """The stack as mrcfile itself reads it (permissive for odd headers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as mrc:
            return np.asarray(mrc.data, dtype=np.float32).copy()


def test_images_relion31_match_mrcfile():
    ps = read_particles(shared_file("cryodrgn/relion31.star"))
    ref = _mrc_reference(shared_file("cryodrgn/relion31.mrcs"))
    out = ps.images([4, 0, 2])
    assert out.dtype == np.float32 and out.shape == (3, 256, 256)
    np.testing.assert_array_equal(out, ref[[4, 0, 2]])
    np.testing.assert_array_equal(ps.images(np.arange(5)), ref)
    np.testing.assert_array_equal(ps.images(slice(1, 3)), ref[1:3])


def test_images_aspire_relion31_sample_stack():
    ps = read_particles(shared_file("aspire/sample_particles_relion31.star"))
    ref = _mrc_reference(shared_file("aspire/sample.mrcs"))
    assert ps.box_size == 200  # from the stack header: the optics table has no rlnImageSize
    np.testing.assert_array_equal(ps.images(np.arange(17)), ref)
    np.testing.assert_array_equal(ps.images([16, 3]), ref[[16, 3]])


def test_images_empiar_star_and_cs_agree():
    star = read_particles(shared_file("cryodrgn/empiar_10076_7.star"))
    cs = read_particles(shared_file("cryodrgn/empiar_10076_7.cs"))
    ref = _mrc_reference(shared_file("cryodrgn/empiar_10076_7.mrc"))
    assert ref.shape == (7, 320, 320)
    np.testing.assert_array_equal(star.images(np.arange(7)), ref)
    np.testing.assert_array_equal(cs.images([6, 1]), ref[[6, 1]])
    np.testing.assert_allclose(star.ctf[:, :2], cs.ctf[:, :2], rtol=1e-6)


def test_subset_and_ctf_params():
    ps = read_particles(shared_file("cryodrgn/relion31.star"))
    sub = ps.subset([3, 1])
    assert len(sub) == 2
    np.testing.assert_array_equal(sub.rotations, ps.rotations[[3, 1]])
    np.testing.assert_array_equal(sub.images([0, 1]), ps.images([3, 1]))
    c = ps.ctf_params([3, 1], dtype=torch.float64)
    assert isinstance(c, CTFParams) and len(c) == 2
    assert c.defocus_u_angstrom.dtype == torch.float64
    np.testing.assert_array_equal(c.defocus_u_angstrom.numpy(), ps.ctf[[3, 1], 0])
    full = ps.ctf_params()
    assert full.voltage_kv.dtype == torch.float32 and len(full) == 5
    mask = ps.half_set == 1
    assert len(ps.subset(mask)) == int(mask.sum())


def test_shard_covers_set_once():
    ps = read_particles(shared_file("cryodrgn/relion31.6opticsgroups.star"))
    parts = [ps.shard(r, 3) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(len(ps)))


def test_from_arrays_in_memory_images():
    rng = np.random.default_rng(3)
    imgs = rng.normal(size=(6, 16, 16)).astype(np.float32)
    ctf = CTFParams.create(np.linspace(1e4, 2e4, 6))
    ps = ParticleSet.from_arrays(
        rotations=torch.eye(3).expand(6, 3, 3),
        shifts_px=np.zeros((6, 2)),
        ctf=ctf,
        pixel_size_angstrom=2.0,
        box_size=16,
        half_set=np.array([1, 2] * 3),
        images=imgs,
    )
    assert len(ps) == 6 and ps.has_ctf and ps.rotations.dtype == np.float64
    np.testing.assert_array_equal(ps.images([5, 0]), imgs[[5, 0]])
    np.testing.assert_allclose(
        ps.ctf_params(dtype=torch.float64).defocus_u_angstrom.numpy(), np.linspace(1e4, 2e4, 6)
    )
    assert ps.summary()["half_set_sizes"] == [3, 3]


def test_from_arrays_with_image_names(tmp_path):
    stack = tmp_path / "s.mrcs"
    data = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    with mrcfile.new(stack) as mrc:
        mrc.set_data(data)
    ps = ParticleSet.from_arrays(
        rotations=None,
        pixel_size_angstrom=1.0,
        box_size=8,
        image_names=["000003@s.mrcs", "000001@s.mrcs"],
        datadir=tmp_path,
    )
    np.testing.assert_array_equal(ps.images([0, 1]), data[[2, 0]])


def _copy_relion31(tmp_path):
    star = tmp_path / "r.star"
    shutil.copy(shared_file("cryodrgn/relion31.mrcs"), tmp_path / "relion31.mrcs")
    star.write_text(shared_file("cryodrgn/relion31.star").read_text())
    return star


def test_image_index_beyond_stack(tmp_path):
    star = _copy_relion31(tmp_path)
    star.write_text(star.read_text().replace("000005@relion31.mrcs", "000009@relion31.mrcs"))
    ps = read_particles(star)
    with pytest.raises(CryogradError, match=r"row 5: image index 9 is beyond the 5 images") as e:
        ps.images([4])
    assert str(star) in str(e.value)
    with pytest.raises(CryogradError, match="row 5"):
        ps.check_images()
    ps.images([0, 1])  # the others still read


def test_stack_box_differs_from_image_size(tmp_path):
    star = _copy_relion31(tmp_path)
    text = star.read_text()
    # rlnImageSize 256 -> 128 in the optics row
    star.write_text(text.replace("   256            2", "   128            2"))
    ps = read_particles(star)
    assert ps.box_size == 128
    with pytest.raises(CryogradError, match="image box 256 differs from rlnImageSize 128"):
        ps.images([0])
    with pytest.raises(CryogradError, match="differs from rlnImageSize"):
        ps.check_images()


def test_non_square_images(tmp_path):
    with mrcfile.new(tmp_path / "rect.mrcs") as mrc:
        mrc.set_data(np.zeros((2, 8, 12), dtype=np.float32))
    star = tmp_path / "rect.star"
    star.write_text(
        "data_\n\nloop_\n_rlnImageName\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n"
        "1@rect.mrcs 0 0 0\n2@rect.mrcs 0 0 0\n"
    )
    with pytest.raises(CryogradError, match="not square") as e:
        read_particles(star, angpix=1.0)
    assert "rect.mrcs" in str(e.value)


def test_missing_stack_is_reported_then_fatal_on_read():
    ps = read_particles(shared_file("cryodrgn/relion5.star"))
    missing = ps.check_images()
    assert len(missing) == 2
    s = ps.summary()
    assert s["images"]["missing_stack_files"] == 2
    assert s["images"]["particles_with_missing_image"] == 17
    with pytest.raises(CryogradError, match="not found"):
        ps.images([0])


def test_datadir_resolves_images(tmp_path):
    star = tmp_path / "meta" / "e.star"
    star.parent.mkdir()
    star.write_text(shared_file("cryodrgn/empiar_10076_7.star").read_text())
    ps = read_particles(star)
    assert len(ps.missing_stacks()) == 1
    ps = read_particles(star, datadir=shared_file("cryodrgn/empiar_10076_7.mrc").parent)
    assert ps.missing_stacks() == []
    assert ps.images([0]).shape == (1, 320, 320)


def test_pickles_for_worker_processes():
    import pickle

    ps = read_particles(shared_file("cryodrgn/relion31.star"))
    first = ps.images([1])  # opens a memory map
    copy = pickle.loads(pickle.dumps(ps))
    np.testing.assert_array_equal(copy.images([1]), first)
    np.testing.assert_array_equal(copy.rotations, ps.rotations)


def test_truncated_stack_error_names_stack_and_star(tmp_path):
    star = _copy_relion31(tmp_path)
    data = (tmp_path / "relion31.mrcs").read_bytes()
    (tmp_path / "relion31.mrcs").write_bytes(data[: len(data) // 2])
    ps = read_particles(star)
    for call in (ps.check_images, lambda: ps.images([0])):
        with pytest.raises(CryogradError) as e:
            call()
        message = str(e.value)
        assert "relion31.mrcs" in message and str(star) in message and "\n" not in message
