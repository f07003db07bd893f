"""Zernike polynomials with RELION's normalisation and indexing (``src/jaz/math/Zernike.cpp``).

RELION evaluates its aberration polynomials on spatial frequencies in 1/Å, *not* on a unit disc:

    Z(m, n; k) = R(|m|, n; ρ) · cos(m φ)      (m ≥ 0)
    Z(m, n; k) = R(|m|, n; ρ) · sin(|m| φ)    (m < 0)
    R(m, n; ρ) = Σ_k (−1)^k (n − k)! / (k! ((n + m)/2 − k)! ((n − m)/2 − k)!) ρ^(n − 2k)

with ``ρ = |k|`` in 1/Å and ``φ = atan2(ky, kx)`` (``φ = 0`` at the origin). There is no
normalisation factor, so a coefficient of an order-``n`` term is in radians · Å^n.

Coefficient ``i`` of ``rlnOddZernike`` is term (m, n) with (``Zernike::oddIndexToMN``)::

    k = floor((sqrt(1 + 4 i) − 1) / 2),  n = 2k + 1,  m = 2 (i − k² − k) − n

so the odd list reads (−1,1) (1,1) (−3,3) (−1,3) (1,3) (3,3) (−5,5) …; coefficient ``i`` of
``rlnEvenZernike`` is (``Zernike::evenIndexToMN``)::

    k = floor(sqrt(i)),  n = 2k,  m = 2 (i − k² − k)

so the even list reads (0,0) (−2,2) (0,2) (2,2) (−4,4) (−2,4) (0,4) (2,4) (4,4) ….
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "odd_index_to_mn",
    "even_index_to_mn",
    "number_of_odd_coefficients",
    "number_of_even_coefficients",
    "zernike_radial",
    "zernike_cartesian",
    "zernike_phase",
]


def odd_index_to_mn(index: int) -> tuple[int, int]:
    """``(m, n)`` of coefficient ``index`` of ``rlnOddZernike`` (RELION's ``oddIndexToMN``)."""
    if index < 0:
        raise ValueError(f"Zernike index must be >= 0, got {index}")
    k = int((math.sqrt(1 + 4 * index) - 1.0) / 2.0)
    n = 2 * k + 1
    m = 2 * (index - (k * k + k)) - n
    return m, n


def even_index_to_mn(index: int) -> tuple[int, int]:
    """``(m, n)`` of coefficient ``index`` of ``rlnEvenZernike`` (RELION's ``evenIndexToMN``)."""
    if index < 0:
        raise ValueError(f"Zernike index must be >= 0, got {index}")
    k = int(math.sqrt(index))
    return 2 * (index - k * k - k), 2 * k


def number_of_odd_coefficients(n_max: int) -> int:
    """Length of a complete ``rlnOddZernike`` list up to order ``n_max`` (odd): 2, 6, 12, …"""
    l_ = (n_max - 1) // 2 + 1
    return l_ * l_ + l_


def number_of_even_coefficients(n_max: int) -> int:
    """Length of a complete ``rlnEvenZernike`` list up to order ``n_max`` (even): 1, 4, 9, …"""
    l_ = n_max // 2
    return l_ * l_ + 2 * l_ + 1


def zernike_radial(m: int, n: int, rho: torch.Tensor) -> torch.Tensor:
    """RELION's un-normalised radial polynomial ``R(m, n; ρ)`` (``m ≥ 0``), shaped like ``rho``."""
    if m < 0 or m > n:
        raise ValueError(f"illegal Zernike radial order m={m}, n={n}")
    if (n - m) % 2 == 1:
        return torch.zeros_like(rho)
    out = torch.zeros_like(rho)
    for k in range((n - m) // 2 + 1):
        c = (-1) ** k * math.factorial(n - k)
        c /= math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial((n - m) // 2 - k)
        out = out + c * rho ** (n - 2 * k)
    return out


def zernike_cartesian(m: int, n: int, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """RELION's ``Zernike::Z_cart(m, n, kx, ky)`` on broadcastable frequency tensors (1/Å)."""
    rho = torch.sqrt(kx * kx + ky * ky)
    phi = torch.atan2(ky, kx)  # atan2(0, 0) = 0, as RELION sets it
    return _z_polar(m, n, rho, phi)


def _z_polar(m: int, n: int, rho: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    if m >= 0:
        return zernike_radial(m, n, rho) * torch.cos(m * phi)
    return zernike_radial(-m, n, rho) * torch.sin(-m * phi)


def zernike_phase(
    coefficients: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, parity: str
) -> torch.Tensor:
    """Sum ``Σ_i c_i Z_i(k)`` of RELION's odd or even Zernike series, batched over particles.

    Parameters
    ----------
    coefficients
        ``(..., c)`` coefficients (radians · Å^n), one row per particle or optics group.
    kx, ky
        Frequencies in 1/Å, broadcastable to ``(..., h, w)`` (e.g. ``(h, w)`` or ``(b, h, w)``).
    parity
        ``"odd"`` (``rlnOddZernike`` indexing) or ``"even"`` (``rlnEvenZernike`` indexing).

    Returns
    -------
    torch.Tensor
        ``(..., h, w)`` phase in radians.
    """
    if parity not in ("odd", "even"):
        raise ValueError(f"parity must be 'odd' or 'even', got {parity!r}")
    to_mn = odd_index_to_mn if parity == "odd" else even_index_to_mn
    coefficients = torch.as_tensor(coefficients, dtype=kx.dtype, device=kx.device)
    kx, ky = torch.broadcast_tensors(kx, ky)
    out = torch.zeros_like(kx)
    if coefficients.shape[-1] == 0:
        return out
    rho, phi = torch.sqrt(kx * kx + ky * ky), torch.atan2(ky, kx)
    for i in range(coefficients.shape[-1]):
        m, n = to_mn(i)
        out = out + coefficients[..., i, None, None] * _z_polar(m, n, rho, phi)
    return out
