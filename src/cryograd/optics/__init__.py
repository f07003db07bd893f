"""Optics as RELION models them: beam tilt, Zernike terms, anisotropic magnification, Ewald sphere.

Pure torch functions, batched over particles, on any device and dtype. See
:mod:`cryograd.optics.aberrations` for where RELION applies each factor.
"""

from cryograd.optics.aberrations import (
    RELION_PI,
    aberration_factor,
    beam_tilt_phase,
    even_aberration_phase,
    extract_beam_tilt,
    insert_beam_tilt,
    odd_aberration_phase,
)
from cryograd.optics.ewald import (
    EwaldSettings,
    ctf_p,
    ctfp_sector_image,
    ewald_offset,
    ewald_radius_pixels,
    ewald_weight,
    sector_assignment,
)
from cryograd.optics.groups import GroupAberrations, parse_zernike_list
from cryograd.optics.magnification import (
    aniso_mag_rotation,
    check_mag_matrix,
    mag_matrix,
    magnify_frequencies,
    projection_matrix,
    reference_grid_scale,
)
from cryograd.optics.zernike import (
    even_index_to_mn,
    number_of_even_coefficients,
    number_of_odd_coefficients,
    odd_index_to_mn,
    zernike_cartesian,
    zernike_phase,
    zernike_radial,
)

__all__ = [
    "RELION_PI",
    "aberration_factor",
    "beam_tilt_phase",
    "even_aberration_phase",
    "extract_beam_tilt",
    "insert_beam_tilt",
    "odd_aberration_phase",
    "EwaldSettings",
    "ctf_p",
    "ctfp_sector_image",
    "ewald_offset",
    "ewald_radius_pixels",
    "ewald_weight",
    "sector_assignment",
    "GroupAberrations",
    "parse_zernike_list",
    "aniso_mag_rotation",
    "check_mag_matrix",
    "mag_matrix",
    "magnify_frequencies",
    "projection_matrix",
    "reference_grid_scale",
    "even_index_to_mn",
    "number_of_even_coefficients",
    "number_of_odd_coefficients",
    "odd_index_to_mn",
    "zernike_cartesian",
    "zernike_phase",
    "zernike_radial",
]
