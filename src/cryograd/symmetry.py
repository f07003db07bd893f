"""Point-group symmetry with RELION's symmetry-axis conventions.

Each group is generated, as RELION's ``SymList`` does, from rotation axes given in RELION's
``symmetries.cpp`` (unit vectors in the map frame ``x, y, z``):

- ``Cn``: n-fold about z.
- ``Dn``: n-fold about z and 2-fold about x.
- ``T``: 3-fold about z and 2-fold about ``(0, 0.816496, 0.577350)``.
- ``O``: 3-fold about ``(0.5773502, 0.5773502, 0.5773502)`` and 4-fold about z.
- ``I`` = ``I2``: 2-fold about z, 5-fold about ``(0.525731114, 0, 0.850650807)``, 3-fold about
  ``(0, 0.356822076, 0.934172364)``.
- ``I1``: 2-fold about x, 5-fold about ``(0.85065080702670, 0, -0.5257311142635)``, 3-fold about
  ``(0.9341723640, 0.3568220765, 0)``.
- ``I3``: 2-fold about ``(-0.5257311143, 0, 0.8506508070)``, 5-fold about z, 3-fold about
  ``(-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)``.
- ``I4``: 2-fold about ``(0.5257311143, 0, 0.8506508070)``, 5-fold about
  ``(0.8944271932547096, 0, 0.4472135909903704)``, 3-fold about
  ``(0.4911234778630044, 0.3568220764705179, 0.7946544753759428)``.

The group is the closure of the generators under multiplication (the set of matrices does not
depend on the sense of rotation of the generators, since a group holds every inverse).

A map ``V`` has the symmetry when ``V(R r) = V(r)`` for every ``R`` in the group. With RELION's pose
``A`` the image is ``∫ V(Aᵀ r) dz``; since ``V(Aᵀ r) = V(R Aᵀ r) = V((A Rᵀ)ᵀ r)``, the pose ``A Rᵀ``
gives the same image as ``A`` (see :func:`expand_poses`).
"""

from __future__ import annotations

import math
import re

import torch

from cryograd.errors import CryogradError
from cryograd.geometry import axis_angle_to_matrix

__all__ = ["symmetry_matrices", "group_order", "symmetrize_volume", "expand_poses", "rotate_volume"]

_GENERATORS: dict[str, list[tuple[int, tuple[float, float, float]]]] = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))],
    "O": [(3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0))],
    "I1": [
        (2, (1.0, 0.0, 0.0)),
        (5, (0.85065080702670, 0.0, -0.5257311142635)),
        (3, (0.9341723640, 0.3568220765, 0.0)),
    ],
    "I2": [
        (2, (0.0, 0.0, 1.0)),
        (5, (0.525731114, 0.0, 0.850650807)),
        (3, (0.0, 0.356822076, 0.934172364)),
    ],
    "I3": [
        (2, (-0.5257311143, 0.0, 0.8506508070)),
        (5, (0.0, 0.0, 1.0)),
        (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ],
    "I4": [
        (2, (0.5257311143, 0.0, 0.8506508070)),
        (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
        (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ],
}

_ORDERS = {"T": 12, "O": 24, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def _parse(group: str) -> tuple[str, list[tuple[int, tuple[float, float, float]]], int]:
    name = str(group).strip().upper()
    if name == "I":
        name = "I2"
    m = re.fullmatch(r"([CD])(\d+)", name)
    if m:
        n = int(m.group(2))
        if n < 1:
            raise CryogradError(f"symmetry group {group!r}: the order n must be at least 1")
        gens = [(n, (0.0, 0.0, 1.0))]
        if m.group(1) == "D":
            gens.append((2, (1.0, 0.0, 0.0)))
            return name, gens, 2 * n
        return name, gens, n
    if name in _GENERATORS:
        return name, _GENERATORS[name], _ORDERS[name]
    raise CryogradError(
        f"unknown symmetry group {group!r}: use C1, Cn, Dn, T, O, I (= I2), I1, I2, I3 or I4"
    )


def group_order(group: str) -> int:
    """Number of rotations in a point group (C7: 7, D7: 14, T: 12, O: 24, I: 60)."""
    return _parse(group)[2]


def _fold(n: int, axis: tuple[float, float, float]) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / torch.linalg.vector_norm(a)
    return axis_angle_to_matrix(a * (2.0 * math.pi / n))


def symmetry_matrices(
    group: str, *, dtype: torch.dtype = torch.float64, device=None
) -> torch.Tensor:
    """Rotation matrices of a point group in RELION's axis conventions.

    Parameters
    ----------
    group
        ``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I`` (= ``I2``), ``I1``, ``I2``, ``I3`` or ``I4``
        (case-insensitive).

    Returns
    -------
    torch.Tensor
        ``(|G|, 3, 3)`` rotation matrices, the identity first; the closure of the generators,
        deduplicated (computed in float64, then cast).

    Raises
    ------
    CryogradError
        Unknown group name.
    """
    name, gens, order = _parse(group)
    eye = torch.eye(3, dtype=torch.float64)
    gen_mats = [_fold(n, axis) for n, axis in gens if n > 1]
    # RELION rounds its axes to ~7-10 digits: match elements with a tolerance well above that.
    tol = 1e-4
    elements = [eye]
    frontier = [eye]
    while frontier:
        new = []
        for g in frontier:
            for h in gen_mats:
                cand = h @ g
                stacked = torch.stack(elements)
                if (stacked - cand).abs().amax(dim=(-2, -1)).min() > tol:
                    elements.append(cand)
                    new.append(cand)
                    if len(elements) > order:
                        raise RuntimeError(f"generators of {name} do not close to {order} elements")
        frontier = new
    if len(elements) != order:
        raise RuntimeError(f"group {name} closed with {len(elements)} elements, expected {order}")
    mats = torch.stack(elements)
    # re-orthonormalise (the generators' axes carry RELION's rounding) via the polar decomposition
    u, _, vh = torch.linalg.svd(mats)
    mats = u @ vh
    return mats.to(dtype=dtype, device=device)


def rotate_volume(volume: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """``W(r) = V(R r)`` by trilinear interpolation about the centre voxel ``N // 2``.

    Parameters
    ----------
    volume
        ``(N, N, N)`` indexed ``[z, y, x]``.
    rotation
        ``(3, 3)`` matrix acting on ``(x, y, z)``, or a batch ``(G, 3, 3)`` (then the output is
        ``(G, N, N, N)``). Samples falling outside the box read 0.
    """
    v = torch.as_tensor(volume)
    if not v.is_floating_point():
        v = v.double()
    R = torch.as_tensor(rotation, device=v.device, dtype=v.dtype)
    single = R.ndim == 2
    if single:
        R = R[None]
    box = v.shape[-1]
    if v.shape != (box, box, box):
        raise ValueError(f"volume must be (N, N, N), got {tuple(v.shape)}")
    c = torch.arange(box, device=v.device, dtype=v.dtype) - box // 2
    gz, gy, gx = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.stack([gx, gy, gz], dim=-1)  # (N, N, N, 3) as (x, y, z)
    out = []
    for Rg in R:
        p = r @ Rg.T + box // 2  # index coordinates (x, y, z) of R r
        # grid_sample, align_corners=True: index i maps to -1 + 2 i / (N - 1)
        grid = (2.0 * p / (box - 1) - 1.0)[None]
        sampled = torch.nn.functional.grid_sample(
            v[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        out.append(sampled[0, 0])
    res = torch.stack(out)
    return res[0] if single else res


def symmetrize_volume(volume, group: str) -> torch.Tensor:
    """Average of a map over the rotations of a point group.

    ``V_sym(r) = (1/|G|) Σ_R V(R r)`` with trilinear interpolation about the centre voxel ``N // 2``
    (samples rotated out of the box read 0).

    Parameters
    ----------
    volume
        ``(N, N, N)`` map.
    group
        Point group name, see :func:`symmetry_matrices`.

    Returns
    -------
    torch.Tensor
        ``(N, N, N)``, dtype and device of ``volume``.
    """
    v = torch.as_tensor(volume)
    if not v.is_floating_point():
        v = v.double()
    mats = symmetry_matrices(group, dtype=v.dtype, device=v.device)
    if mats.shape[0] == 1:
        return v.clone()
    acc = torch.zeros_like(v)
    for R in mats:
        acc += rotate_volume(v, R)
    return acc / mats.shape[0]


def expand_poses(rotations, group: str) -> torch.Tensor:
    """Every pose equivalent to each particle's pose under a point group (symmetry expansion).

    For a map with ``V(R r) = V(r)``, the image at pose ``A`` is
    ``∫ V(Aᵀ r) dz = ∫ V(R Aᵀ r) dz = ∫ V((A Rᵀ)ᵀ r) dz``, so the pose ``A Rᵀ`` gives the same
    image.
    Over the whole group ``{A Rᵀ} = {A R}`` (the group holds ``Rᵀ = R⁻¹``); ``R A`` would not do.

    Parameters
    ----------
    rotations
        ``(n, 3, 3)`` RELION ``A`` matrices (torch or numpy).
    group
        Point group name, see :func:`symmetry_matrices`.

    Returns
    -------
    torch.Tensor
        ``(n, |G|, 3, 3)`` with ``out[i, g] = A_i @ R_gᵀ``; ``out[:, 0]`` are the poses given (the
        identity comes first). Reshape to ``(n · |G|, 3, 3)`` for a flat list.
    """
    A = torch.as_tensor(rotations)
    if not A.is_floating_point():
        A = A.double()
    if A.ndim != 3 or A.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must be (n, 3, 3), got {tuple(A.shape)}")
    mats = symmetry_matrices(group, dtype=A.dtype, device=A.device)
    return A[:, None] @ mats.transpose(-1, -2)[None]
