"""Checks that refuse particles which would give a wrong map without an error.

Three kinds, all vectorised so that a million particles are checked in seconds:

* :func:`check_metadata` — physical ranges of the metadata: defocus (with the likely unit error
  named: ``1.5`` where Å are expected looks like µm), pixel size, voltage, spherical aberration,
  amplitude contrast, CTF scale (a negative ``rlnCtfScalefactor`` inverts the contrast), finite
  poses and origins.
* :func:`scan_images` — one pass over the images in large blocks: non-finite pixels, empty or
  constant images, and pixels far beyond the data's noise level (``1e30``); with
  ``skip_bad=True`` such particles are dropped and counted instead.
* :func:`check_halves` — the same image (stack file and index) listed in both gold-standard
  half sets, which makes the half-map FSC meaningless.

Every refusal is a :class:`~cryograd.errors.CryogradError` of one line naming the file and the
particle (1-based rows, as in the STAR file).
"""

from __future__ import annotations

import ctypes
import logging
import sys
from dataclasses import dataclass
from functools import cache

import numpy as np

from cryograd._native import native_function
from cryograd.errors import CryogradError

__all__ = [
    "ImageStats",
    "check_metadata",
    "scan_images",
    "image_stats",
    "check_halves",
    "OUTLIER_FACTOR",
    "BLOCK_BYTES",
]

logger = logging.getLogger(__name__)

OUTLIER_FACTOR = 1.0e4
"""An image whose largest ``|pixel|`` exceeds this many times the median image standard
deviation of the set is refused (a corrupt pixel such as ``1e30``)."""

BLOCK_BYTES = 64 * 2**20
"""Bytes of images read per block by :func:`scan_images`."""

# (column of ParticleSet.ctf, label, low, high, unit, hint below low, hint above high)
_CTF_RANGES = (
    (
        3,
        "voltage (rlnVoltage)",
        10.0,
        1500.0,
        "kV",
        "values look like V / 1000 or MV",
        "values look like V",
    ),
    (
        4,
        "spherical aberration (rlnSphericalAberration)",
        -20.0,
        20.0,
        "mm",
        "",
        "values look like µm",
    ),
    (5, "amplitude contrast (rlnAmplitudeContrast)", 0.0, 1.0, "", "", "values look like per cent"),
)
_MIN_DEFOCUS_A = 100.0
_MAX_DEFOCUS_A = 2.0e5
_PIXEL_RANGE_A = (0.05, 100.0)


def _src(particles) -> str:
    return str(particles.path) if getattr(particles, "path", None) else "particles"


def _row(indices: np.ndarray, mask: np.ndarray) -> int:
    """1-based row of the first particle of ``indices`` where ``mask`` holds."""
    return int(indices[int(np.argmax(mask))]) + 1


def check_metadata(particles, indices: np.ndarray | None = None, *, use_ctf: bool = True) -> None:
    """Refuse metadata outside physical ranges.

    Parameters
    ----------
    particles
        :class:`cryograd.particle_set.ParticleSet`.
    indices
        ``(n,)`` particles to check (default all).
    use_ctf
        Whether the CTF will be used (then its parameters are checked).

    Raises
    ------
    CryogradError
        Naming the file, the first offending row, the value and its likely unit error.
    """
    n = len(particles)
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) == 0:
        return
    src = _src(particles)
    px = np.asarray(particles.pixel_sizes_angstrom, dtype=np.float64)[idx]
    lo, hi = _PIXEL_RANGE_A
    bad = ~np.isfinite(px) | (px < lo) | (px > hi)
    if bad.any():
        value = float(px[np.argmax(bad)])
        hint = (
            "values look like nm or m" if value < lo else "values look like pm or a magnification"
        )
        raise CryogradError(
            f"{src}: row {_row(idx, bad)}: pixel size {value:g} Å is outside "
            f"[{lo:g}, {hi:g}] Å ({hint}); give the pixel size in Å (--angpix)"
        )
    for name, arr in (("orientation", particles.rotations), ("origin", particles.shifts_px)):
        if arr is not None:
            flat = np.asarray(arr)[idx].reshape(len(idx), -1)
            bad = ~np.isfinite(flat).all(axis=1)
            if bad.any():
                raise CryogradError(f"{src}: row {_row(idx, bad)}: {name} is NaN or infinite")
    if use_ctf and particles.ctf is not None:
        _check_ctf(src, np.asarray(particles.ctf, dtype=np.float64)[idx], idx)


def _check_ctf(src: str, ctf: np.ndarray, idx: np.ndarray) -> None:
    """Ranges of the ``(n, 9)`` CTF table (``CTF_COLUMNS`` order) of the particles ``idx``."""
    bad = ~np.isfinite(ctf).all(axis=1)
    if bad.any():
        raise CryogradError(f"{src}: row {_row(idx, bad)}: CTF parameters are NaN or infinite")
    defocus = ctf[:, :2]
    largest = np.abs(defocus).max()
    if 0 < largest < _MIN_DEFOCUS_A:
        raise CryogradError(
            f"{src}: defocus {float(largest):g} Å at most (rlnDefocusU/V): values look like µm; "
            "STAR files give the defocus in Å (multiply by 10000)"
        )
    bad = np.abs(defocus).max(axis=1) > _MAX_DEFOCUS_A
    if bad.any():
        value = float(np.abs(defocus[np.argmax(bad)]).max())
        raise CryogradError(
            f"{src}: row {_row(idx, bad)}: defocus {value:g} Å is beyond "
            f"{_MAX_DEFOCUS_A:g} Å (20 µm): values look like nm × 10 or pm"
        )
    for col, label, low, high, unit, below, above in _CTF_RANGES:
        values = ctf[:, col]
        bad = (values < low) | (values > high)
        if bad.any():
            value = float(values[np.argmax(bad)])
            hint = below if value < low else above
            raise CryogradError(
                f"{src}: row {_row(idx, bad)}: {label} {value:g} {unit} is outside "
                f"[{low:g}, {high:g}]" + (f" ({hint})" if hint else "")
            )
    scale = ctf[:, 8]
    bad = scale <= 0
    if bad.any():
        value = float(scale[np.argmax(bad)])
        raise CryogradError(
            f"{src}: row {_row(idx, bad)}: CTF scale (rlnCtfScalefactor) {value:g} "
            "must be positive (a negative scale inverts the contrast of the map)"
        )


@dataclass
class ImageStats:
    """Per-image statistics of a set of particles, ``(n,)`` arrays in the order of ``indices``.

    Attributes
    ----------
    indices
        Particle indices.
    finite
        Every pixel finite.
    max_abs
        Largest ``|pixel|`` (inf for non-finite images).
    std
        Standard deviation of the pixels (float64; 0 for constant images).
    """

    indices: np.ndarray
    finite: np.ndarray
    max_abs: np.ndarray
    std: np.ndarray


def image_stats(particles, indices: np.ndarray, *, block_bytes: int = BLOCK_BYTES) -> ImageStats:
    """Read the images of ``indices`` in blocks of about ``block_bytes`` and summarise each.

    The blocks follow stack file and image index order, so that memory-mapped stacks are read
    sequentially.
    """
    idx = np.asarray(indices, dtype=np.int64)
    n = len(idx)
    finite = np.ones(n, dtype=bool)
    max_abs = np.zeros(n, dtype=np.float64)
    std = np.zeros(n, dtype=np.float64)
    d = int(particles.box_size or 1)
    per_block = max(1, int(block_bytes) // (4 * d * d))
    order = np.lexsort((particles.stack_indices[idx], particles.stack_ids[idx]))
    for start in range(0, n, per_block):
        where = order[start : start + per_block]
        images = particles.images(idx[where]).reshape(len(where), -1)
        ok, peak, spread = _block_stats(images)
        finite[where], max_abs[where], std[where] = ok, peak, spread
    return ImageStats(idx, finite, max_abs, std)


def _block_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(b, npix)`` images: every pixel finite, largest ``|pixel|`` (inf if not finite) and the
    float64 standard deviation (of zeros if not finite), each ``(b,)``. By the compiled loop
    (one read of each image, on the torch threads) where it was built, else NumPy."""
    fn = _stats_function()
    if fn is not None and images.dtype == np.float32 and images.flags.c_contiguous:
        b, npix = images.shape
        ok, peak, spread = np.empty(b, np.uint8), np.empty(b), np.empty(b)
        threads = _threads()
        fn(
            images.ctypes.data,
            b,
            npix,
            ok.ctypes.data,
            peak.ctypes.data,
            spread.ctypes.data,
            threads,
        )
        return ok.astype(bool), peak, spread
    peak = np.abs(images).max(axis=1)  # NaN or inf where an image has such a pixel
    ok = np.isfinite(peak)
    clean = images if ok.all() else np.where(ok[:, None], images, 0.0)
    return ok, np.where(ok, peak, np.inf), clean.std(axis=1, dtype=np.float64)


@cache
def _stats_function():
    args = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 3
    return native_function("cryograd_image_stats_f32", [*args, ctypes.c_int])


def _threads() -> int:
    """The torch thread count when torch is loaded (``--threads``), else 1."""
    torch = sys.modules.get("torch")
    return max(1, int(torch.get_num_threads())) if torch is not None else 1


def _describe(particles, i: int) -> str:
    """``stack.mrcs: image 7 (particle 12 of particles.star)``."""
    sid = int(particles.stack_ids[i])
    if sid < 0:
        return f"{_src(particles)}: particle {i + 1}"
    stack = particles.stack_files[sid]
    return (
        f"{stack}: image {int(particles.stack_indices[i]) + 1} "
        f"(particle {i + 1} of {_src(particles)})"
    )


def bad_images(stats: ImageStats) -> dict[str, np.ndarray]:
    """Problem -> boolean ``(n,)`` mask of the images with it (non-finite, constant, outlier)."""
    usable = stats.finite & (stats.std > 0)
    noise = float(np.median(stats.std[usable])) if usable.any() else 0.0
    outlier = usable & (stats.max_abs > OUTLIER_FACTOR * noise)
    return {
        "has NaN or infinite pixels": ~stats.finite,
        "is empty or constant (every pixel the same value)": stats.finite & (stats.std == 0),
        f"has a pixel beyond {OUTLIER_FACTOR:g} × the data's noise level": outlier,
    }


def scan_images(
    particles, indices: np.ndarray, *, skip_bad: bool = False, stats: ImageStats | None = None
) -> np.ndarray:
    """Check every image of ``indices``; return the indices to use.

    Parameters
    ----------
    particles
        :class:`cryograd.particle_set.ParticleSet` with images.
    indices
        ``(n,)`` particles to check.
    skip_bad
        Drop the bad particles (and log how many) instead of refusing them.
    stats
        Precomputed :func:`image_stats` of ``indices`` (e.g. gathered from several processes).

    Returns
    -------
    np.ndarray
        The indices kept, in their order.

    Raises
    ------
    CryogradError
        The first bad image (without ``skip_bad``), or when no particle is left.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if stats is None:
        stats = image_stats(particles, idx)
    problems = bad_images(stats)
    bad = np.zeros(len(idx), dtype=bool)
    for problem, mask in problems.items():
        if not mask.any():
            continue
        if not skip_bad:
            first = int(idx[np.argmax(mask)])
            more = f" (and {int(mask.sum()) - 1} more)" if mask.sum() > 1 else ""
            raise CryogradError(
                f"{_describe(particles, first)} {problem}{more}; use skip_bad_particles to "
                "leave such particles out"
            )
        logger.warning("leaving out %d particles whose image %s", int(mask.sum()), problem)
        bad |= mask
    kept = idx[~bad]
    if len(kept) < 2:
        raise CryogradError(f"{_src(particles)}: fewer than 2 particles with usable images")
    return kept


def check_halves(particles, halves: tuple[np.ndarray, np.ndarray]) -> None:
    """Refuse an image (same stack file and index) that is in both half sets.

    Raises
    ------
    CryogradError
        Naming the image, its two rows and how many such images there are.
    """
    h1, h2 = (np.asarray(h, dtype=np.int64) for h in halves)
    if particles.image_array is not None or len(h1) == 0 or len(h2) == 0:
        return
    width = np.int64(int(particles.stack_indices.max(initial=0)) + 1)

    def keys(h: np.ndarray) -> np.ndarray:
        k = particles.stack_ids[h].astype(np.int64) * width + particles.stack_indices[h]
        return np.where(particles.stack_ids[h] >= 0, k, -1 - h)  # no image: never a match

    k1, k2 = keys(h1), keys(h2)
    both = np.intersect1d(k1, k2)
    for k in (k1, k2):
        _, counts = np.unique(k, return_counts=True)
        if (counts > 1).any():
            logger.warning(
                "%s: %d images are listed more than once within one half set",
                _src(particles),
                int((counts > 1).sum()),
            )
    if len(both):
        a = int(h1[np.argmax(k1 == both[0])])
        b = int(h2[np.argmax(k2 == both[0])])
        raise CryogradError(
            f"{_src(particles)}: {len(both)} images are listed in both half sets (first: "
            f"{particles.image_name(a)}, rows {a + 1} and {b + 1}); the gold-standard FSC "
            "needs independent halves: remove the duplicates"
        )
