"""The format registry: READERS / WRITERS by extension, read_particles, and the CLI using them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cryograd
import cryograd.particles
from cryograd.cli.main import main
from cryograd.errors import CryogradError
from cryograd.io import registry
from cryograd.io.registry import READERS, WRITERS, Writer, read_particles, reader_for
from cryograd.particle_set import ParticleSet
from tests.conftest import shared_file


def test_every_documented_extension_is_registered():
    for suffix in (".star", ".cs", ".pkl", ".mrc", ".mrcs"):
        assert suffix in READERS
    assert READERS[".star"].kind == "particles" and READERS[".mrcs"].kind == "map"
    assert list(WRITERS) == [".star", ".pkl"]
    # RELION does not insist on .star: unclaimed extensions are read as STAR
    assert reader_for("particles.txt") is READERS[".star"]
    assert reader_for("P.STAR") is READERS[".star"]


def test_read_particles_refuses_maps_and_lone_pose_files():
    with pytest.raises(CryogradError, match="MRC map or stack, not a particle file"):
        read_particles(shared_file("cryodrgn/hand.mrcs"))
    with pytest.raises(CryogradError, match="needs its CTF file too"):
        read_particles(shared_file("cryodrgn/pose.star.pkl"))


def test_convert_writes_through_the_registry(tmp_path, monkeypatch, capsys):
    written = []

    def fake_write(path, particles, options):
        written.append((path.suffix, len(particles)))
        path.write_text("x")
        return [path]

    monkeypatch.setitem(WRITERS, ".fake", Writer("test format", fake_write))
    out = tmp_path / "o.fake"
    assert main(["convert", str(shared_file("cryodrgn/relion31.star")), str(out)]) == 0
    assert written == [(".fake", 5)] and out.read_text() == "x"
    # an extension no writer claims is refused, naming the ones that exist
    assert main(["convert", str(shared_file("cryodrgn/relion31.star")), str(tmp_path / "o.x")]) == 2
    assert ".star or .pkl or .fake" in capsys.readouterr().err


def test_info_summarises_through_the_registry(monkeypatch, capsys):
    def summarise(path, options):
        return {
            "file": str(path),
            "format": "test",
            "shape": [2, 3],
            "voxel_size_angstrom": 1.0,
            "voxel_size_xyz_angstrom": [1.0, 1.0, 1.0],
            "origin_angstrom": [0, 0, 0],
            "start_voxels": [0, 0, 0],
            "mode": 2,
        }

    monkeypatch.setitem(READERS, ".star", registry.Reader("t", "map", None, summarise))
    assert main(["info", str(shared_file("cryodrgn/relion31.star"))]) == 0
    assert "format: test" in capsys.readouterr().out


def test_read_particles_same_set_through_each_path():
    path = shared_file("cryodrgn/relion31.star")
    a = read_particles(path)
    assert cryograd.particles.read_particles is read_particles
    assert isinstance(a, ParticleSet) and len(a) == 5
    np.testing.assert_array_equal(a.ctf, READERS[".star"].read(path, registry.ReadOptions()).ctf)


def test_no_import_circle_between_particles_and_io():
    # each module imports alone in a fresh interpreter, particle_set before and after io
    for first, second in [
        ("cryograd.particle_set", "cryograd.io.registry"),
        ("cryograd.io.star", "cryograd.particles"),
        ("cryograd.io.cryosparc", "cryograd.particle_set"),
        ("cryograd.particles", "cryograd.io.drgn"),
    ]:
        code = f"import {first}, {second}"
        src = str(Path(cryograd.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": src}
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
