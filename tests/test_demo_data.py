"""The built-in demo map: loads, has the recorded size, and matches the original EMD-5168."""

from __future__ import annotations

import numpy as np

from cryograd.data import DEMO_MAP_VOXEL_SIZE_ANGSTROM, demo_map_path
from cryograd.io.mrc import read_map
from tests.conftest import shared_file


def _radius(n: int) -> np.ndarray:
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2)


def test_demo_map_loads_with_recorded_size():
    path = demo_map_path()
    assert path.is_file() and path.name == "emd_5168_64.mrc"
    m = read_map(path)
    assert m.data.shape == (64, 64, 64) and m.data.dtype == np.float32
    assert abs(m.voxel_size_angstrom - 2.721875) < 1e-5
    assert DEMO_MAP_VOXEL_SIZE_ANGSTROM == 2.721875
    assert np.all(np.isfinite(m.data))
    # provenance ships beside it
    assert (path.parent / "PROVENANCE.md").read_text().count("EMD-5168") >= 1


def test_demo_map_is_centred_and_clear_of_the_box_edges():
    v = read_map(demo_map_path()).data.astype(np.float64)
    r = _radius(64)
    assert np.all(v[r >= 28] == 0)  # soft spherical mask ends 4 px inside the box
    pos = np.clip(v, 0, None)
    z, y, x = np.indices(v.shape)
    com = [(pos * a).sum() / pos.sum() for a in (z, y, x)]
    assert np.allclose(com, 32, atol=2.0), com
    # extended density, not a blank or a single spike: 1% of the voxels above a tenth of the peak
    assert np.mean(v > 0.1 * v.max()) > 0.01


def test_demo_map_correlates_with_the_original():
    """Fourier-pad the 64³ map back to the 100³ grid of emd_5168.map; correlate inside the mask."""
    original = read_map(shared_file("tempy/emd_5168.map"))
    assert abs(original.voxel_size_angstrom - 1.742) < 1e-4
    small = read_map(demo_map_path()).data.astype(np.float64)
    n_small, n_big = 64, 100
    spec = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(small)))
    padded = np.zeros((n_big,) * 3, dtype=complex)
    lo = n_big // 2 - n_small // 2
    padded[lo : lo + n_small, lo : lo + n_small, lo : lo + n_small] = spec
    big = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(padded))).real * (n_big / n_small) ** 3
    inside = _radius(n_big) <= 20 * n_big / n_small  # well inside the 22 px plateau of the mask
    a = big[inside]
    b = original.data.astype(np.float64)[inside]
    cc = np.corrcoef(a, b)[0, 1]
    assert cc > 0.9, cc
