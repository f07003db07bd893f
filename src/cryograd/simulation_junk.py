"""Junk particles for simulated sets (``cryograd simulate --junk F --junk-kind K``).

A fraction ``F`` of the particles are junk of a kind:

``noise``
    an empty image: the noise alone;
``blob``
    a high-contrast ice blob (a Gaussian, half the time) or carbon edge (a smoothed step across
    the image, the other half), ``BLOB_CONTRAST`` times the signal's standard deviation, no CTF;
``other``
    a projection of another molecule (``--junk-map``, same box) at a random pose, with the
    particle's CTF and origin;
``pose``
    a correct image of the molecule at a pose other than the one recorded;
``mixed``
    each junk particle one of the kinds above at random (``other`` only with a junk map).

The recorded poses, origins and CTFs are those drawn for every particle; noise is added to junk as
to the rest. The STAR file marks them: ``rlnCryogradJunk`` (0/1) and ``rlnCryogradJunkKind``
(``none``, ``noise``, ``blob``, ``other``, ``pose``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryograd.errors import CryogradError

__all__ = ["JUNK_KINDS", "BLOB_CONTRAST", "JunkPlan", "plan_junk", "check_junk", "junk_columns"]

JUNK_KINDS = ("noise", "blob", "other", "pose", "mixed")
KIND_NAMES = ("none", "noise", "blob", "other", "pose")
BLOB_CONTRAST = 5.0


def check_junk(fraction: float, kind: str, junk_map) -> None:
    """Refuse a fraction outside ``[0, 1)``, an unknown kind, ``other`` without a junk map."""
    if not (np.isfinite(fraction) and 0 <= fraction < 1):
        raise CryogradError(f"junk must be a fraction in [0, 1), got {fraction}")
    if kind not in JUNK_KINDS:
        raise CryogradError(f"junk_kind must be one of {', '.join(JUNK_KINDS)}, got {kind!r}")
    if kind == "other" and junk_map is None:
        raise CryogradError("junk_kind other needs the other molecule's map (junk_map)")


@dataclass
class JunkPlan:
    """Which particles are junk and how: ``kinds`` ``(n,)`` codes into ``KIND_NAMES`` (0 clean),
    ``true_rotations`` ``(n, 3, 3)`` the poses the images are made at, ``blobs`` ``(n, 5)`` blob
    parameters (kind, centre y, x or angle, width, sign)."""

    kinds: np.ndarray
    true_rotations: np.ndarray
    blobs: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """``(n,)`` 0/1 junk labels."""
        return (self.kinds > 0).astype(np.int64)


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` uniform rotations (normalised Gaussian quaternions), as the clean draws."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, -1) for r in rows], axis=-2)


def plan_junk(
    n: int, fraction: float, kind: str, rotations: np.ndarray, has_map: bool, seed: int
) -> JunkPlan:
    """Draw the junk of a set of ``n`` (its own generator: the clean draws do not change)."""
    rng = np.random.default_rng([int(seed), 7919])
    kinds = np.zeros(n, dtype=np.int64)
    m = int(round(fraction * n))
    rows = rng.choice(n, size=m, replace=False) if m else np.zeros(0, dtype=np.int64)
    if kind == "mixed":
        choices = [1, 2, 3, 4] if has_map else [1, 2, 4]
        kinds[rows] = np.array(choices)[np.arange(m) % len(choices)]
        rng.shuffle(kinds[rows])
    elif m:
        kinds[rows] = KIND_NAMES.index(kind)
    true_rot = np.array(rotations, copy=True)
    moved = np.isin(kinds, (3, 4))
    true_rot[moved] = _random_rotations(int(moved.sum()), rng)
    blobs = (
        np.column_stack(
            [
                rng.integers(0, 2, n),
                rng.uniform(-0.4, 0.4, n),
                rng.uniform(-0.4, 0.4, n) if n else np.zeros(0),
                rng.uniform(0.08, 0.25, n),
                rng.choice([-1.0, 1.0], n),
            ]
        )
        if n
        else np.zeros((0, 5))
    )
    return JunkPlan(kinds, true_rot, blobs)


def blob_images(params: np.ndarray, box: int, amplitude: float) -> torch.Tensor:
    """``(b, D, D)`` blobs (``params[:, 0] == 0``) or carbon edges (1) of the given amplitude."""
    c = (torch.arange(box, dtype=torch.float64) - box // 2) / box
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    out = []
    for kind, a, b, width, sign in params:
        if kind == 0:
            r2 = (yy - a) ** 2 + (xx - b) ** 2
            img = torch.exp(-r2 / (2 * width**2))
        else:
            angle = np.pi * (b + 0.5)
            dist = yy * np.cos(angle) + xx * np.sin(angle) - a * 0.5
            img = torch.sigmoid(dist / (0.1 * width))
        out.append(sign * amplitude * img)
    return torch.stack(out) if out else torch.zeros((0, box, box), dtype=torch.float64)


def junk_columns(plan: JunkPlan) -> dict[str, np.ndarray]:
    """The STAR columns marking the junk."""
    return {
        "rlnCryogradJunk": plan.labels,
        "rlnCryogradJunkKind": np.array([KIND_NAMES[k] for k in plan.kinds], dtype=object),
    }
