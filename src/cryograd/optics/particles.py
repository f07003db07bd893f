"""RELION's observation model for a batch of particles: per-group tables, slice matrices, CTF.

:class:`ParticleOptics` holds, for the ``b`` particles of a batch, the row of each particle's
optics group in a few per-group tables (``G`` groups, so a batch never holds ``b × D²`` phases).
It is what the forward model and the insertion apply (``ObservationModel`` in RELION's
``src/jaz/single_particle/obs_model.cpp``):

- image pixel ``k`` (integer frequency of the group's ``D``-box) is the specimen frequency
  ``M k / (D p_g)`` 1/Å (``M`` the group's ``rlnMagMat``, ``p_g`` its ``rlnImagePixelSize``): the
  CTF (with the even-Zernike offset in its phase) and the odd-Zernike/beam-tilt phase are
  evaluated there (``CTF::getFftwImage`` with an observation model, ``getGammaOffset``,
  ``getPhaseCorrection``);
- the slice sample of pixel ``k`` sits at ``s_g · Aᵀ (M k, 0)`` on the reference grid (RELION's
  ``applyScaleDifference(applyAnisoMag(A))``, inverted), with ``s_g`` =
  :func:`~cryograd.optics.reference_grid_scale` (``p_ref / p_g`` for a common box): the
  projectors take the matrix ``s_g M₃ᵀ A`` (:meth:`ParticleOptics.slice_matrices`);
- a prediction is multiplied by ``exp(+iφ)`` and an observation by ``exp(−iφ)`` (RELION's
  ``predictObservation`` / ``demodulatePhase``): as one diagonal factor of the forward model,
  whose adjoint is the demodulation;
- pixels whose slice sample falls beyond the reference Nyquist radius ``D / 2`` are left out
  (RELION's back-projector skips ``r² > r_max²``), and so are the padded pixels of a group
  resampled from a smaller box (:mod:`cryograd.optics.rescale`): the ``keep`` table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from cryograd.ctf import CTFParams, CtfSwitches, ctf_from_frequencies
from cryograd.fourier import frequency_grid_2d
from cryograd.optics.groups import GroupAberrations
from cryograd.optics.magnification import magnify_frequencies, projection_matrix
from cryograd.optics.zernike import zernike_phase

__all__ = ["ParticleOptics"]

_EYE2 = torch.eye(2, dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class ParticleOptics:
    """Optics of ``b`` particles as rows of ``G`` per-group tables.

    Attributes
    ----------
    group
        ``(b,)`` int64 row of each particle's group in the tables below.
    aberrations
        :class:`~cryograd.optics.GroupAberrations` of the ``G`` groups (odd list with the beam
        tilt folded in, even list, magnification matrices).
    pixel_size_angstrom
        ``(G,)`` float64 pixel size of each group's images, Å.
    grid_scale
        ``(G,)`` float64 :func:`~cryograd.optics.reference_grid_scale` of each group (1 on the
        reference grid).
    switches
        ``relion_reconstruct``'s CTF switches (:class:`cryograd.ctf.CtfSwitches`).
    band_radius
        ``(G,)`` float64 band of each group's images in Fourier pixels (pixels at or beyond it
        are left out: a group resampled up from a smaller box,
        :class:`~cryograd.optics.rescale.GroupSampling`), ``inf`` for none; None: all ``inf``.
    """

    group: torch.Tensor
    aberrations: GroupAberrations
    pixel_size_angstrom: torch.Tensor
    grid_scale: torch.Tensor
    switches: CtfSwitches = CtfSwitches()
    band_radius: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.group.shape[0])

    # ------------------------------------------------------------------ batch handling
    def chunk(self, index) -> ParticleOptics:
        """The optics of particles ``index`` (a slice or index tensor); tables are shared."""
        return replace(self, group=self.group[index], _cache=self._cache)

    def repeat_interleave(self, copies: int) -> ParticleOptics:
        """Each particle ``copies`` times in a row (symmetry copies, particle-major)."""
        return replace(self, group=self.group.repeat_interleave(copies), _cache=self._cache)

    # ------------------------------------------------------------------ what is switched on
    @property
    def has_odd(self) -> bool:
        """Whether any group has a non-zero odd (antisymmetric) term or beam tilt."""
        odd = self.aberrations.odd
        return bool(odd.numel() and (odd != 0).any())

    @property
    def has_even(self) -> bool:
        """Whether any group has a non-zero even-Zernike term."""
        even = self.aberrations.even
        return bool(even.numel() and (even != 0).any())

    @property
    def has_mag(self) -> bool:
        """Whether any group's magnification matrix differs from the identity."""
        return bool((self.aberrations.mag != _EYE2).any())

    @property
    def has_band(self) -> bool:
        """Whether a group's images hold a narrower band than the box (padded spectra)."""
        band = self.band_radius
        return band is not None and bool(torch.isfinite(band).any())

    @property
    def changes_geometry(self) -> bool:
        """Whether the slices are not the plain central sections of ``A`` (mag or scale)."""
        return self.has_mag or bool((self.grid_scale != 1.0).any())

    # ------------------------------------------------------------------ geometry
    def slice_matrices(self, rotations: torch.Tensor) -> torch.Tensor:
        """``(b, 3, 3)`` matrices ``s_g M₃ᵀ A`` the projectors take instead of ``A``.

        Parameters
        ----------
        rotations
            ``(b, 3, 3)`` RELION ``A`` of the batch's particles.
        """
        if not self.changes_geometry:
            return rotations
        g = self.group.to(self.aberrations.mag.device)
        mag = self.aberrations.mag[g].to(device=rotations.device, dtype=rotations.dtype)
        scale = self.grid_scale[g].to(device=rotations.device, dtype=rotations.dtype)
        return projection_matrix(rotations, mag, scale)

    # ------------------------------------------------------------------ per-group tables
    def _tables(self, box_size: int) -> dict[str, torch.Tensor]:
        """float64 CPU tables ``(G, D, D // 2 + 1)``: magnified frequencies (1/Å), odd phase,
        even offset, keep mask (computed once per box)."""
        key = ("tables", int(box_size))
        if key not in self._cache:
            kx, ky = frequency_grid_2d(box_size, rfft=True, dtype=torch.float64)
            inv = 1.0 / (box_size * self.pixel_size_angstrom.double())  # (G,) 1/Å per step
            mag = self.aberrations.mag.double()
            sx, sy = magnify_frequencies(
                kx * inv[:, None, None], ky * inv[:, None, None], mag
            )  # (G, D, W) specimen frequencies
            mx, my = magnify_frequencies(kx, ky, mag)  # (G, D, W) integer units
            radius = self.grid_scale.double()[:, None, None] * torch.sqrt(mx * mx + my * my)
            keep = radius <= box_size // 2 + 1e-6
            if self.has_band:
                assert self.band_radius is not None
                own = torch.sqrt(kx * kx + ky * ky)  # (D, W) the image's own pixels
                keep &= own < self.band_radius.double()[:, None, None]
            keep = keep.double()
            ab = self.aberrations
            self._cache[key] = {
                "sx": sx,
                "sy": sy,
                "odd": zernike_phase(ab.odd.double(), sx, sy, "odd"),
                "even": zernike_phase(ab.even.double(), sx, sy, "even"),
                "keep": keep,
            }
        return self._cache[key]

    def _rows(self, name: str, box_size: int, device, dtype) -> torch.Tensor:
        table = self._tables(box_size)[name]
        return table[self.group.to(table.device)].to(device=device, dtype=dtype)

    def specimen_frequencies(
        self, box_size: int, *, device=None, dtype=torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(sx, sy, offset)`` of the batch, each ``(b, D, D // 2 + 1)``: the magnified specimen
        frequencies (1/Å) the CTF is taken at and the even-Zernike offset of ``γ`` (None when
        there is none)."""
        sx = self._rows("sx", box_size, device, dtype)
        sy = self._rows("sy", box_size, device, dtype)
        offset = self._rows("even", box_size, device, dtype) if self.has_even else None
        return sx, sy, offset

    def ctf_values(
        self, params: CTFParams, box_size: int, *, device=None, dtype=torch.float32
    ) -> torch.Tensor:
        """RELION's CTF of the batch on the half grid, at the magnified frequencies, with the
        even-Zernike offset and the CTF switches: ``(b, D, D // 2 + 1)``."""
        sx, sy, offset = self.specimen_frequencies(box_size, device=device)
        p = params.to(device=device, dtype=torch.float64)
        ctf = ctf_from_frequencies(
            p, sx, sy, per_particle=True, gamma_offset=offset, switches=self.switches
        )
        return ctf.to(dtype)

    def image_factor(self, box_size: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """``keep · exp(+iφ)`` of the batch, ``(b, D, D // 2 + 1)`` complex (real ``keep`` when
        there is no odd term): the forward model's factor after the CTF."""
        keep = self._rows("keep", box_size, device, dtype)
        if not self.has_odd:
            return keep
        phase = self._rows("odd", box_size, device, dtype)
        return torch.polar(keep, phase)

    def sample_tables(self, flat: torch.Tensor, box_size: int) -> torch.Tensor:
        """``(G, n_s, 4)`` float64 ``(cos φ, sin φ, even offset, keep)`` at the slice samples
        ``flat`` (positions in the flattened half grid) for the compiled insertion."""
        t = self._tables(box_size)
        g = t["odd"].shape[0]
        cols = [
            torch.cos(t["odd"]),
            torch.sin(t["odd"]),
            t["even"] if self.has_even else torch.zeros_like(t["odd"]),
            t["keep"],
        ]
        out = torch.stack([c.reshape(g, -1)[:, flat.cpu()] for c in cols], dim=-1)
        return out.contiguous()

    def ctf_magnification(self) -> torch.Tensor:
        """``(b, 2, 2)`` float64 magnification matrix of each particle (CPU)."""
        return self.aberrations.mag.double()[self.group.cpu()]

    def describe(self) -> str:
        """One line saying what is applied (for logs)."""
        parts = []
        if self.has_odd:
            parts.append("beam tilt / odd Zernike")
        if self.has_even:
            parts.append("even Zernike")
        if self.has_mag:
            parts.append("magnification matrix")
        if bool((self.grid_scale != 1.0).any()):
            parts.append("pixel sizes rescaled to the first group's")
        if self.switches.any:
            parts.append("CTF switches")
        return ", ".join(parts) or "none"
