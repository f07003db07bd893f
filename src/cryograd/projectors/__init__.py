"""Matched projector pairs (torch reference implementations).

- :mod:`cryograd.projectors.real_space`: voxel-driven bilinear splatting and its exact transpose.
- :mod:`cryograd.projectors.fourier_slice`: padded 3D FFT, trilinear central slices on the half
  grid, inverse 2D FFT; its exact transpose; the gridding correction.

Both make line integrals in voxel units, so their images agree;
:class:`cryograd.forward.ForwardModel`
composes either with the CTF and shift operators.
"""

from cryograd.projectors import fourier_slice, real_space

__all__ = ["fourier_slice", "real_space"]
