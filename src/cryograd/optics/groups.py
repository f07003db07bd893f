"""Per-optics-group aberration parameters read from a RELION ``data_optics`` table.

``rlnOddZernike`` / ``rlnEvenZernike`` are bracketed lists (``[c0,c1,...]``) in the STAR file;
``rlnBeamTiltX/Y`` are in mrad; ``rlnMagMat00..11`` the magnification matrix (identity when
absent). RELION reads all of them in ``ObservationModel::ObservationModel`` (``obs_model.cpp``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from cryograd.errors import CryogradError
from cryograd.optics.aberrations import insert_beam_tilt
from cryograd.optics.magnification import check_mag_matrix, mag_matrix
from cryograd.optics.zernike import number_of_even_coefficients, number_of_odd_coefficients

__all__ = ["GroupAberrations", "parse_zernike_list"]

_MAG_COLUMNS = ("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11")


def parse_zernike_list(value: object, where: str) -> list[float]:
    """Parse one ``[c0,c1,...]`` STAR value into floats.

    Parameters
    ----------
    value
        The cell: a string as STAR readers return it, or a sequence of numbers.
    where
        ``"<file> optics group <n> column <name>"``, used in the error message.

    Raises
    ------
    CryogradError
        Empty, unbracketed or non-numeric values, or non-finite numbers.
    """
    if isinstance(value, str):
        text = value.strip()
        if not (text.startswith("[") and text.endswith("]")):
            raise CryogradError(f"{where}: expected a bracketed list like [0.1,0.2], got {value!r}")
        items = [t for t in text[1:-1].replace(" ", ",").split(",") if t]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise CryogradError(f"{where}: expected a bracketed list like [0.1,0.2], got {value!r}")
    try:
        out = [float(t) for t in items]
    except (TypeError, ValueError):
        raise CryogradError(f"{where}: non-numeric coefficient in {value!r}") from None
    if not out:
        raise CryogradError(f"{where}: empty coefficient list")
    if not all(math.isfinite(v) for v in out):
        raise CryogradError(f"{where}: non-finite coefficient in {value!r}")
    return out


def _check_length(n: int, name: str, where: str) -> None:
    """Refuse a Zernike list that is not complete up to some order (RELION writes complete
    lists: odd 2, 6, 12, 20, … values, even 1, 4, 9, 16, …)."""
    odd = name == "rlnOddZernike"
    lengths = [
        number_of_odd_coefficients(order) if odd else number_of_even_coefficients(order)
        for order in range(1 if odd else 0, 16, 2)
    ]
    if n not in lengths:
        shown = ", ".join(str(v) for v in lengths[:5])
        raise CryogradError(
            f"{where}: {n} coefficients is not a complete Zernike list ({shown}, … values)"
        )


def _padded(rows: list[list[float]], dtype: torch.dtype) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.zeros(len(rows), width, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


@dataclass
class GroupAberrations:
    """Aberrations of ``g`` optics groups, in table order (RELION's group ``i + 1`` is row ``i``).

    Attributes
    ----------
    odd
        ``(g, c)`` odd Zernike coefficients *including* the beam tilt (``insertTilt``); ``c = 0``
        when the table has neither.
    even
        ``(g, c)`` even Zernike coefficients (``c = 0`` when absent).
    mag
        ``(g, 2, 2)`` magnification matrices (identity when absent).
    has_mag
        Whether the table had any ``rlnMagMat`` column.
    """

    odd: torch.Tensor
    even: torch.Tensor
    mag: torch.Tensor
    has_mag: bool

    @classmethod
    def from_table(
        cls,
        table: Mapping[str, Sequence],
        wavelength_angstrom: Sequence[float],
        source: str = "optics table",
        replace_coma: bool = False,
    ) -> GroupAberrations:
        """Build from a ``data_optics`` table (a DataFrame or a mapping of column to values).

        Parameters
        ----------
        table
            Columns by name; must hold ``rlnSphericalAberration`` when beam tilt is present.
        wavelength_angstrom
            ``(g,)`` electron wavelength of each group, in Å.
        source
            File name for error messages.
        replace_coma
            See :func:`cryograd.optics.insert_beam_tilt`.
        """
        cols = set(table.keys())
        g = len(wavelength_angstrom)
        dtype = torch.float64

        def lists(name: str) -> list[list[float]]:
            vals = list(table[name])
            out = []
            for i, v in enumerate(vals):
                where = f"{source}: optics group {i + 1} column {name}"
                coefficients = parse_zernike_list(v, where)
                _check_length(len(coefficients), name, where)
                out.append(coefficients)
            return out

        odd = (
            _padded(lists("rlnOddZernike"), dtype)
            if "rlnOddZernike" in cols
            else torch.zeros(g, 0, dtype=dtype)
        )
        even = (
            _padded(lists("rlnEvenZernike"), dtype)
            if "rlnEvenZernike" in cols
            else torch.zeros(g, 0, dtype=dtype)
        )
        if "rlnBeamTiltX" in cols or "rlnBeamTiltY" in cols:
            tx = torch.tensor([float(v) for v in table.get("rlnBeamTiltX", [0.0] * g)], dtype=dtype)
            ty = torch.tensor([float(v) for v in table.get("rlnBeamTiltY", [0.0] * g)], dtype=dtype)
            cs = torch.tensor([float(v) for v in table["rlnSphericalAberration"]], dtype=dtype)
            odd = insert_beam_tilt(
                odd, tx, ty, cs, torch.tensor(list(wavelength_angstrom), dtype=dtype)
            )
        has_mag = any(c in cols for c in _MAG_COLUMNS)
        defaults = (1.0, 0.0, 0.0, 1.0)
        entries = [
            [float(v) for v in table[c]] if c in cols else [d] * g
            for c, d in zip(_MAG_COLUMNS, defaults)
        ]
        mag = mag_matrix(*entries, dtype=dtype)
        try:
            check_mag_matrix(mag)
        except ValueError as exc:
            raise CryogradError(f"{source}: rlnMagMat00..11: {exc}") from None
        return cls(odd=odd, even=even, mag=mag, has_mag=has_mag)
