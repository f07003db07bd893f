"""RELION's contrast transfer function, batched over particles, on full or half Fourier grids.

For a spatial frequency ``s = (sx, sy)`` in 1/Å with azimuth ``θ = atan2(sy, sx)``::

    λ   = 12.2643247 / sqrt(V · (1 + 0.978466e-6 · V))            (Å, V in volts)
    Δf  = ½(dfU + dfV) + ½(dfU − dfV) · cos(2(θ − defocus_angle))   (Å, positive = underfocus)
    γ   = −π λ Δf |s|² + (π/2) Cs λ³ |s|⁴ − φ − atan(Q0 / sqrt(1 − Q0²))
    CTF = −sin(γ) · exp(−B |s|² / 4) · scale

with ``Cs`` in Å (mm · 1e7) and ``φ`` the phase shift in radians. The sign is RELION's: the CTF is
positive (about ``+Q0``) at low frequency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from cryograd.fourier import frequency_grid_2d

__all__ = [
    "CTFParams",
    "CtfSwitches",
    "ctf_phase",
    "electron_wavelength_angstrom",
    "ctf_2d",
    "ctf_from_frequencies",
]


@dataclass(frozen=True)
class CtfSwitches:
    """``relion_reconstruct``'s CTF switches (``CTF::getCTF``'s ``do_abs``, ``do_only_flip_phases``,
    ``do_intact_until_first_peak``).

    Attributes
    ----------
    intact_first_peak
        ``--ctf_intact_first_peak``: the CTF is 1 where ``|γ| < π/2`` (before the envelope).
    phase_flipped
        ``--ctf_phase_flipped``: the data were phase-flipped; the CTF is ``|CTF|`` (after the
        envelope, before the scale).
    only_flip_phases
        ``--only_flip_phases``: the CTF is ``sign(CTF)`` (±1, ``+1`` at 0; after the envelope,
        before the scale); ignored with ``phase_flipped``, as in RELION.
    """

    intact_first_peak: bool = False
    phase_flipped: bool = False
    only_flip_phases: bool = False

    @property
    def any(self) -> bool:
        """Whether any switch is on."""
        return self.intact_first_peak or self.phase_flipped or self.only_flip_phases

    def flags(self) -> int:
        """Bits 4, 8, 16 of the compiled insertion's flags (``_cpu_slices.c``)."""
        return 4 * self.intact_first_peak + 8 * self.phase_flipped + 16 * self.only_flip_phases


def electron_wavelength_angstrom(voltage_kv: torch.Tensor | float) -> torch.Tensor:
    """Relativistic electron wavelength in Å for a voltage in kV (RELION's formula)."""
    v = torch.as_tensor(voltage_kv)
    v = (v if v.is_floating_point() and isinstance(voltage_kv, torch.Tensor) else v.double()) * 1e3
    return 12.2643247 / torch.sqrt(v * (1.0 + 0.978466e-6 * v))


@dataclass
class CTFParams:
    """CTF parameters of a batch of particles, one value per particle (all ``(b,)`` tensors).

    Attributes
    ----------
    defocus_u_angstrom, defocus_v_angstrom
        ``rlnDefocusU``/``V`` in Å (positive = underfocus).
    defocus_angle_degrees
        ``rlnDefocusAngle``, azimuth of the U axis in degrees.
    voltage_kv
        ``rlnVoltage`` in kV.
    spherical_aberration_mm
        ``rlnSphericalAberration`` in mm.
    amplitude_contrast
        ``rlnAmplitudeContrast`` (``Q0``, 0–1).
    phase_shift_degrees
        ``rlnPhaseShift`` in degrees (0 when absent).
    b_factor
        ``rlnCtfBfactor`` in Å² (0 when absent).
    scale
        ``rlnCtfScalefactor`` (1 when absent).
    """

    defocus_u_angstrom: torch.Tensor
    defocus_v_angstrom: torch.Tensor
    defocus_angle_degrees: torch.Tensor
    voltage_kv: torch.Tensor
    spherical_aberration_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift_degrees: torch.Tensor
    b_factor: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def create(
        cls,
        defocus_u_angstrom,
        defocus_v_angstrom=None,
        defocus_angle_degrees=0.0,
        voltage_kv=300.0,
        spherical_aberration_mm=2.7,
        amplitude_contrast=0.1,
        phase_shift_degrees=0.0,
        b_factor=0.0,
        scale=1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> CTFParams:
        """Build from scalars or arrays, broadcast to one batch of ``(b,)`` tensors."""
        if defocus_v_angstrom is None:
            defocus_v_angstrom = defocus_u_angstrom
        values = [
            torch.as_tensor(v, dtype=dtype, device=device).reshape(-1)
            for v in (
                defocus_u_angstrom,
                defocus_v_angstrom,
                defocus_angle_degrees,
                voltage_kv,
                spherical_aberration_mm,
                amplitude_contrast,
                phase_shift_degrees,
                b_factor,
                scale,
            )
        ]
        values = torch.broadcast_tensors(*values)
        return cls(*[v.contiguous() for v in values])

    def __len__(self) -> int:
        return int(self.defocus_u_angstrom.shape[0])

    def to(self, device=None, dtype=None) -> CTFParams:
        """Move every field to ``device`` / ``dtype``."""
        return CTFParams(
            **{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)}
        )

    def __getitem__(self, index) -> CTFParams:
        return CTFParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def as_tensor(self) -> torch.Tensor:
        """All fields stacked, ``(b, 9)`` in field order (for kernels)."""
        return torch.stack([getattr(self, f.name) for f in fields(self)], dim=-1)


def _per_particle_column(sx: torch.Tensor, per_particle: bool):
    extra = sx.dim() - 1 if per_particle else sx.dim()

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, *([1] * extra))

    return col


def ctf_phase(
    params: CTFParams,
    sx: torch.Tensor,
    sy: torch.Tensor,
    *,
    per_particle: bool = False,
    gamma_offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RELION's CTF phase ``γ`` (radians) and astigmatic defocus ``Δf`` (Å) at ``(sx, sy)`` 1/Å.

    Shapes and arguments as :func:`ctf_from_frequencies`; both results are ``(b, ...)``.
    """
    p = params.to(device=sx.device, dtype=sx.dtype)
    col = _per_particle_column(sx, per_particle)
    lam = col(electron_wavelength_angstrom(p.voltage_kv))
    cs = col(p.spherical_aberration_mm) * 1e7
    q0 = col(p.amplitude_contrast)
    phase = torch.deg2rad(col(p.phase_shift_degrees))
    dfu, dfv = col(p.defocus_u_angstrom), col(p.defocus_v_angstrom)
    ang = torch.deg2rad(col(p.defocus_angle_degrees))
    s2 = sx**2 + sy**2
    theta = torch.atan2(sy, sx)
    defocus = 0.5 * (dfu + dfv) + 0.5 * (dfu - dfv) * torch.cos(2 * (theta - ang))
    amp_phase = torch.atan(q0 / torch.sqrt(1 - q0**2))
    gamma = -math.pi * lam * defocus * s2 + 0.5 * math.pi * cs * lam**3 * s2**2 - phase - amp_phase
    if gamma_offset is not None:
        gamma = gamma + gamma_offset.to(device=gamma.device, dtype=gamma.dtype)
    return gamma, defocus


def ctf_from_frequencies(
    params: CTFParams,
    sx: torch.Tensor,
    sy: torch.Tensor,
    *,
    per_particle: bool = False,
    gamma_offset: torch.Tensor | None = None,
    switches: CtfSwitches | None = None,
) -> torch.Tensor:
    """RELION's CTF at arbitrary spatial frequencies (``CTF::getCTF``).

    Parameters
    ----------
    params
        Batch of ``b`` particles.
    sx, sy
        Spatial frequencies in 1/Å, shape ``(...)`` shared by all particles, or ``(b, ...)`` with
        ``per_particle=True``.

    Returns
    -------
    torch.Tensor
        ``(b, ...)`` real CTF values.
    """
    gamma, _ = ctf_phase(params, sx, sy, per_particle=per_particle, gamma_offset=gamma_offset)
    p = params.to(device=sx.device, dtype=sx.dtype)
    s2 = sx**2 + sy**2
    col = _per_particle_column(sx, per_particle)
    value = -torch.sin(gamma)
    if switches is not None and switches.intact_first_peak:
        value = torch.where(gamma.abs() < math.pi / 2, torch.ones_like(value), value)
    value = value * torch.exp(-col(p.b_factor) * s2 / 4.0)
    if switches is not None and switches.phase_flipped:
        value = value.abs()
    elif switches is not None and switches.only_flip_phases:
        value = torch.where(value < 0, -torch.ones_like(value), torch.ones_like(value))
    return value * col(p.scale)


def ctf_2d(
    params: CTFParams,
    box_size: int,
    pixel_size_angstrom: float,
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RELION's CTF on a 2D DFT grid for a batch of particles.

    Parameters
    ----------
    params
        ``b`` particles.
    box_size
        Image side ``N`` in pixels.
    pixel_size_angstrom
        Pixel size in Å.
    rfft
        Half grid ``(N, N // 2 + 1)`` (matches :func:`cryograd.fourier.rfft2_centered`) or full
        grid ``(N, N)``, both in torch's unshifted layout.

    Returns
    -------
    torch.Tensor
        ``(b, N, W)`` real.
    """
    if device is None:
        device = params.defocus_u_angstrom.device
    kx, ky = frequency_grid_2d(box_size, rfft=rfft, device=device, dtype=dtype)
    scale = 1.0 / (box_size * pixel_size_angstrom)
    return ctf_from_frequencies(params, kx * scale, ky * scale)
