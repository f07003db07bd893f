"""Synthetic particle data sets: projections of a map with RELION CTFs, shifts and white noise.

For each particle: an orientation uniform on SO(3) (a random unit quaternion), an origin uniform in
``[-shift_max, shift_max]²`` pixels, a RELION CTF (300 kV, Cs 2.7 mm, Q0 0.1, mean defocus uniform
in the given range, astigmatism ``dU − dV`` uniform in [0, 1000] Å at a uniform angle). The clean
image is ``T C P x`` (:class:`cryograd.forward.ForwardModel`, the shift by ``−origin``); white
Gaussian noise is added with variance ``σ² = var(signal) / snr``.

SNR definition: ``var(signal)`` is the variance of the clean images' pixels over the whole box,
pooled over all particles (around their common mean); the noise variance is ``σ²`` per pixel. The
signal variance is measured on the clean images of the first ``min(n, 1024)`` particles of the set
before the noisy images are made (exact for sets of up to 1024 particles).

Output (``out_dir``): ``particles.mrcs`` (or ``particles_001.mrcs``, ``particles_002.mrcs``, ...
when there are more than ``images_per_stack`` particles), streamed batch by batch;
``particles.star`` (RELION 3.1, ``rlnRandomSubset`` alternating 1, 2, 1, ...); ``ground_truth.mrc``,
a copy of the map. The STAR file is written last, so a folder with a STAR file holds a complete set.

Memory: images are made and written ``batch_size`` at a time; only the per-particle parameters
(``O(n)``) are held. Writing one stack maps it into memory and its header statistics take another
pass of the same size, so peak memory grows with the stack (about twice its size), not with ``n``;
by default a stack holds at most 10000 images and at most 512 MiB (:func:`default_stack_size`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cryograd.arrays import to_tensor
from cryograd.checks import check_metadata
from cryograd.ctf import CTFParams
from cryograd.errors import CryogradError
from cryograd.forward import ForwardModel
from cryograd.io.mrc import StackWriter, read_map, write_map
from cryograd.io.registry import read_particles
from cryograd.io.star import write_star
from cryograd.particle_set import OpticsGroup, ParticleSet
from cryograd.simulation_junk import (
    BLOB_CONTRAST,
    JunkPlan,
    blob_images,
    check_junk,
    junk_columns,
    plan_junk,
)

__all__ = [
    "SimulationOptions",
    "SimulationResult",
    "simulate",
    "with_optics",
    "project_particles",
    "random_rotations",
    "validate_volume",
    "default_stack_size",
]

logger = logging.getLogger(__name__)

_PILOT = 1024
_STACK_IMAGES = 10000
_STACK_BYTES = 512 * 2**20
_ASTIGMATISM_MAX_ANGSTROM = 1000.0


@dataclass
class SimulationResult:
    """What :func:`simulate` wrote.

    Attributes
    ----------
    star_path, map_path
        ``particles.star`` and ``ground_truth.mrc``.
    stack_paths
        The ``.mrcs`` stacks, in order.
    particles
        The :class:`~cryograd.particles.ParticleSet` written (parameters as drawn).
    noise_sigma
        Standard deviation of the added noise (per pixel).
    signal_variance
        Measured ``var(signal)`` that set it.
    """

    star_path: Path
    map_path: Path
    stack_paths: list[Path]
    particles: Any
    noise_sigma: float
    signal_variance: float


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` rotation matrices uniform on SO(3), from normalised Gaussian quaternions."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def validate_volume(volume: np.ndarray, source: str) -> None:
    """Raise :class:`CryogradError` unless ``volume`` is a finite cubic 3D map."""
    if volume.ndim != 3:
        raise CryogradError(f"{source}: map must be 3D, got shape {tuple(volume.shape)}")
    if not volume.shape[0] == volume.shape[1] == volume.shape[2]:
        raise CryogradError(f"{source}: map must be cubic, got shape {tuple(volume.shape)}")
    if not np.all(np.isfinite(volume)):
        raise CryogradError(f"{source}: map contains NaN or infinite values")


def default_stack_size(box_size: int) -> int:
    """Images per ``.mrcs`` stack: 10000, fewer when that would exceed 512 MiB (float32)."""
    return max(1, min(_STACK_IMAGES, _STACK_BYTES // (4 * box_size * box_size)))


def _stack_names(n: int, per_stack: int) -> list[tuple[str, int, int]]:
    """``(file name, first, stop)`` of each stack."""
    if n <= per_stack:
        return [("particles.mrcs", 0, n)]
    count = (n + per_stack - 1) // per_stack
    width = max(3, len(str(count)))
    return [
        (f"particles_{i + 1:0{width}d}.mrcs", i * per_stack, min(n, (i + 1) * per_stack))
        for i in range(count)
    ]


@dataclass(frozen=True)
class SimulationOptions:
    """How :func:`simulate` draws and writes the particles (every field has a default).

    Attributes
    ----------
    snr
        ``var(signal) / var(noise)`` (positive; see the module docstring). ``inf`` adds no noise.
    defocus_range_um
        ``(min, max)`` mean defocus in µm (underfocus positive).
    shift_max_px
        Origins are uniform in ``[-shift_max_px, shift_max_px]`` along x and y.
    seed
        Seed of NumPy's generator (orientations, shifts, CTFs, noise).
    projector
        ``"fourier"`` or ``"real"``.
    pad
        Padding factor of the Fourier projector (a finer grid than the reconstruction's 2 makes
        the data less like the reconstructing model; ignored by ``"real"``).
    batch_size
        Particles projected and written per batch (memory is ``O(batch_size · D²)``).
    images_per_stack
        Images per ``.mrcs`` file (default :func:`default_stack_size`: 10000, fewer for boxes
        above 115 px so that a stack stays under 512 MiB).
    device
        Torch device for the projections (default: CPU).
    progress
        Show a progress bar.
    junk, junk_kind, junk_map
        Fraction of junk particles in ``[0, 1)``, their kind and the other molecule's map
        (array or MRC path) for ``other`` (:mod:`cryograd.simulation_junk`).
    beam_tilt_mrad
        ``(tx, ty)`` ``rlnBeamTiltX/Y`` in mrad, or None.
    odd_zernike, even_zernike
        ``rlnOddZernike`` / ``rlnEvenZernike`` coefficients (RELION's indexing and units,
        radians · Å^n), or None.
    mag_matrix
        ``(M00, M01, M10, M11)`` ``rlnMagMat``, or None.
    group_pixel_sizes
        Pixel sizes in Å of several optics groups (the first must be the map's, within 0.1 %;
        particles are dealt to the groups in pairs, 1 1 2 2 ..., so that every group has particles
        of both random subsets, which alternate), or None for one group. Every group gets
        the aberrations above. The images are made with RELION's observation model of these optics
        (:class:`cryograd.optics.particles.ParticleOptics`) and the optics table records them.
    """

    snr: float = 0.1
    defocus_range_um: tuple[float, float] = (1.0, 2.5)
    shift_max_px: float = 3.0
    seed: int = 0
    projector: str = "fourier"
    pad: float = 2.0
    batch_size: int = 256
    images_per_stack: int | None = None
    device: torch.device | str | None = None
    progress: bool = True
    junk: float = 0.0
    junk_kind: str = "mixed"
    junk_map: Any = None
    beam_tilt_mrad: tuple[float, float] | None = None
    odd_zernike: tuple[float, ...] | None = None
    even_zernike: tuple[float, ...] | None = None
    mag_matrix: tuple[float, float, float, float] | None = None
    group_pixel_sizes: tuple[float, ...] | None = None


def _optics_extra(opts: SimulationOptions) -> dict:
    """The ``OpticsGroup.extra`` fields (STAR optics columns) of the aberrations asked for."""
    extra: dict = {}
    if opts.beam_tilt_mrad is not None:
        extra["rlnBeamTiltX"], extra["rlnBeamTiltY"] = (float(v) for v in opts.beam_tilt_mrad)
    for name, values in (
        ("rlnOddZernike", opts.odd_zernike),
        ("rlnEvenZernike", opts.even_zernike),
    ):
        if values is not None:
            extra[name] = "[" + ",".join(repr(float(v)) for v in values) + "]"
    if opts.mag_matrix is not None:
        names = ("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11")
        extra.update({k: float(v) for k, v in zip(names, opts.mag_matrix)})
    return extra


def with_optics(particles: ParticleSet, opts: SimulationOptions) -> ParticleSet:
    """``particles`` with the optics groups and aberrations of ``opts`` (checked).

    Raises
    ------
    CryogradError
        A first group pixel size other than the set's, a non-positive pixel size, an incomplete
        Zernike list or a singular magnification matrix.
    """
    extra = _optics_extra(opts)
    pixels = [particles.pixel_size_angstrom]
    if opts.group_pixel_sizes is not None:
        pixels = [float(v) for v in opts.group_pixel_sizes]
        ref = particles.pixel_size_angstrom
        if not pixels or abs(pixels[0] - ref) > 1e-3 * ref:
            raise CryogradError(
                f"optics group pixel sizes: the first ({pixels[0] if pixels else None}) must be "
                f"the map's pixel size {ref:.6g} Å (the reference grid)"
            )
        pixels[0] = ref
        if not all(np.isfinite(v) and v > 0 for v in pixels):
            raise CryogradError(f"optics group pixel sizes must be positive, got {pixels}")
    groups = [
        OpticsGroup(i + 1, f"opticsGroup{i + 1}", p, particles.box_size, dict(extra))
        for i, p in enumerate(pixels)
    ]
    out = replace(
        particles,
        optics_groups=groups,
        # in pairs: rlnRandomSubset alternates, so dealing one by one would put all of a
        # two-group set's half 1 in group 1 and its half 2 in group 2
        optics_group=((np.arange(len(particles)) // 2) % len(groups)) + 1,
    )
    try:  # refuse bad lists / a singular matrix before anything is written
        out.group_aberrations()
    except CryogradError as exc:
        message = str(exc).replace("particle set: ", "", 1)
        for column, flag in _OPTICS_FLAGS.items():
            message = message.replace(column, f"{flag} ({column})")
        raise CryogradError(f"simulate optics: {message}") from None
    return out


_OPTICS_FLAGS = {
    "rlnOddZernike": "--odd-zernike",
    "rlnEvenZernike": "--even-zernike",
    "rlnMagMat00..11": "--mag-matrix",
}


def simulate(
    volume,
    n: int,
    pixel_size: float | None = None,
    *,
    out_dir: str | os.PathLike = "simulated",
    options: SimulationOptions | None = None,
    **settings,
) -> SimulationResult:
    """Simulate a particle data set from a map and write it to ``out_dir``.

    Parameters
    ----------
    volume
        ``(D, D, D)`` map (NumPy array, tensor) or the path of an MRC map.
    n
        Number of particles (at least 1).
    pixel_size
        Pixel size in Å (default: the map file's voxel size; required for arrays).
    out_dir
        Output folder (created).
    options
        :class:`SimulationOptions` (default: all defaults).
    **settings
        Fields of :class:`SimulationOptions` overriding ``options`` (``snr=0.5, seed=3``, ...).

    Returns
    -------
    SimulationResult

    Raises
    ------
    CryogradError
        Bad map or parameters; nothing is written then.
    TypeError
        A setting that is not a field of :class:`SimulationOptions`.
    """
    opts = replace(options or SimulationOptions(), **settings)
    vol, pixel_size, source = _load_volume(volume, pixel_size)
    n = int(n)
    box = vol.shape[0]
    per_stack = _check_options(n, opts, source, box)
    check_junk(opts.junk, opts.junk_kind, opts.junk_map)
    junk_vol = None
    if opts.junk_map is not None and opts.junk > 0:
        junk_vol = torch.from_numpy(_load_volume(opts.junk_map, pixel_size)[0])
        if junk_vol.shape != vol.shape:
            raise CryogradError(
                f"junk_map: box {junk_vol.shape[0]} differs from the map's box {box}"
            )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CryogradError(f"{out}: exists and is not a folder")

    rng = np.random.default_rng(opts.seed)
    rotations, shifts, ctf = _draw_parameters(n, opts, rng)
    optics_set = with_optics(
        ParticleSet.from_arrays(ctf=ctf, pixel_size_angstrom=pixel_size, box_size=box), opts
    )
    device = torch.device(opts.device) if opts.device is not None else torch.device("cpu")
    model = ForwardModel(box, pixel_size, opts.projector, opts.pad)
    vol_t = torch.from_numpy(vol).to(device)
    rot_t = torch.from_numpy(rotations).to(device=device, dtype=torch.float32)
    sh_t = torch.from_numpy(shifts).to(device=device, dtype=torch.float32)
    ctf_t = ctf.to(device=device, dtype=torch.float32)

    def optics(rows):
        return optics_set.particle_optics(rows, device=device)

    def clean(start: int, stop: int) -> torch.Tensor:
        rows = np.arange(start, stop)
        return model.project(
            vol_t, rot_t[start:stop], sh_t[start:stop], ctf_t[start:stop], optics=optics(rows)
        )

    signal_var = _signal_variance(clean, n, box, opts.batch_size)
    if not signal_var > 0:
        raise CryogradError(f"{source}: the map's projections are constant; nothing to simulate")
    plan = None
    if opts.junk > 0:
        plan = plan_junk(n, opts.junk, opts.junk_kind, rotations, junk_vol is not None, opts.seed)
        clean = _junk_images(model, (vol_t, junk_vol), plan, (sh_t, ctf_t, optics), signal_var)
    sigma = float(np.sqrt(signal_var / opts.snr)) if np.isfinite(opts.snr) else 0.0
    logger.info("signal variance %.4g, noise sigma %.4g (SNR %.4g)", signal_var, sigma, opts.snr)

    out.mkdir(parents=True, exist_ok=True)
    noise_gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
    stack_paths, names = _write_stacks(
        out, _stack_names(n, per_stack), (box, pixel_size), clean, (sigma, noise_gen), opts
    )
    map_path = write_map(out / "ground_truth.mrc", vol, pixel_size)
    particles = ParticleSet.from_arrays(
        rotations=rotations,
        shifts_px=shifts,
        ctf=ctf,
        pixel_size_angstrom=float(pixel_size),
        box_size=box,
        half_set=(np.arange(n) % 2) + 1,
        image_names=names,
        datadir=out,
    )
    particles = replace(
        particles,
        optics_groups=optics_set.optics_groups,
        optics_group=optics_set.optics_group,
    )
    if plan is not None:
        particles = replace(particles, extra_columns=pd.DataFrame(junk_columns(plan)))
    star_path = write_star(out / "particles.star", particles, image_names=names)
    return SimulationResult(
        star_path=star_path,
        map_path=map_path,
        stack_paths=stack_paths,
        particles=particles,
        noise_sigma=sigma,
        signal_variance=signal_var,
    )


def _load_volume(volume, pixel_size: float | None) -> tuple[np.ndarray, float, str]:
    """``(D, D, D)`` float32 map, its pixel size in Å and a name for messages."""
    source = "volume"
    if isinstance(volume, (str, os.PathLike)):
        source = str(volume)
        mapdata = read_map(volume)
        vol = mapdata.data
        header = float(mapdata.voxel_size_angstrom or 0.0)
        if pixel_size is None:
            pixel_size = header or None
        elif header > 0 and abs(header - pixel_size) > 0.01 * pixel_size:
            logger.warning(
                "%s: using pixel size %.4g Å, not the header's %.4g Å", source, pixel_size, header
            )
    else:
        vol = to_tensor(volume).detach().cpu().numpy()
    vol = np.asarray(vol, dtype=np.float32)
    validate_volume(vol, source)
    if pixel_size is None or not np.isfinite(pixel_size) or pixel_size <= 0:
        raise CryogradError(f"{source}: pixel size unknown or not positive; give it (--angpix)")
    return vol, float(pixel_size), source


def _check_options(n: int, opts: SimulationOptions, source: str, box: int) -> int:
    """Check the settings (CryogradError naming the bad one); returns the images per stack."""
    if n < 1:
        raise CryogradError(f"number of particles must be at least 1, got {n}")
    if not opts.snr > 0:
        raise CryogradError(f"SNR must be positive, got {opts.snr}")
    dmin, dmax = (float(v) for v in opts.defocus_range_um)
    if not (0 < dmin <= dmax and np.isfinite(dmax)):
        raise CryogradError(f"defocus range must be 0 < min <= max µm, got {dmin}:{dmax}")
    if not (opts.shift_max_px >= 0 and np.isfinite(opts.shift_max_px)):
        raise CryogradError(f"maximum shift must be >= 0 pixels, got {opts.shift_max_px}")
    if opts.projector not in ("fourier", "real"):
        raise CryogradError(f"unknown projector {opts.projector!r}: use 'fourier' or 'real'")
    if not opts.pad >= 1:
        raise CryogradError(f"pad must be at least 1, got {opts.pad}")
    per_stack = opts.images_per_stack
    if per_stack is None:
        per_stack = default_stack_size(box)
    if opts.batch_size < 1 or per_stack < 1:
        raise CryogradError("batch size and images per stack must be at least 1")
    return per_stack


def _draw_parameters(
    n: int, opts: SimulationOptions, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, CTFParams]:
    """Rotations ``(n, 3, 3)``, origins ``(n, 2)`` px and CTFs, drawn in this order from ``rng``."""
    dmin, dmax = (float(v) for v in opts.defocus_range_um)
    rotations = random_rotations(n, rng)
    shifts = rng.uniform(-opts.shift_max_px, opts.shift_max_px, size=(n, 2))
    mean_df = rng.uniform(dmin, dmax, size=n) * 1e4
    astig = rng.uniform(0.0, _ASTIGMATISM_MAX_ANGSTROM, size=n)
    angle = rng.uniform(0.0, 180.0, size=n)
    ctf = CTFParams.create(
        mean_df + astig / 2, mean_df - astig / 2, angle, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0
    )
    return rotations, shifts, ctf


def _junk_images(model, volumes, plan: JunkPlan, geometry, signal_var: float):
    """``clean(start, stop)`` of a set with junk: images at the true poses, the other
    molecule's, empty ones and blobs where the plan says (:mod:`cryograd.simulation_junk`)."""
    vol_t, junk_vol = volumes
    sh_t, ctf_t, optics = geometry
    rot_t = torch.from_numpy(plan.true_rotations).to(device=vol_t.device, dtype=torch.float32)
    amp = BLOB_CONTRAST * float(np.sqrt(signal_var))

    def images(start: int, stop: int) -> torch.Tensor:
        img = model.project(
            vol_t,
            rot_t[start:stop],
            sh_t[start:stop],
            ctf_t[start:stop],
            optics=optics(np.arange(start, stop)),
        )
        kinds = torch.from_numpy(plan.kinds[start:stop]).to(img.device)
        other = torch.nonzero(kinds == 3).squeeze(1)
        if len(other) and junk_vol is not None:
            rows = other + start
            img[other] = model.project(
                junk_vol.to(vol_t),
                rot_t[rows],
                sh_t[rows],
                ctf_t[rows.to(ctf_t.defocus_u_angstrom.device)],
                optics=optics(rows.cpu().numpy()),
            ).to(img.dtype)
        img[kinds == 1] = 0.0
        blob = torch.nonzero(kinds == 2).squeeze(1)
        if len(blob):
            params = plan.blobs[start:stop][blob.cpu().numpy()]
            img[blob] = blob_images(params, img.shape[-1], amp).to(img)
        return img

    return images


def _signal_variance(clean, n: int, box: int, batch_size: int) -> float:
    """Pixel variance of the clean images of the first ``min(n, 1024)`` particles (pooled)."""
    pilot = min(n, _PILOT)
    total = total_sq = 0.0
    for start in range(0, pilot, batch_size):
        img = clean(start, min(pilot, start + batch_size)).double()
        total += float(img.sum())
        total_sq += float((img * img).sum())
    count = pilot * box * box
    return total_sq / count - (total / count) ** 2


def _write_stacks(
    out: Path,
    stacks: list[tuple[str, int, int]],
    geometry: tuple[int, float],
    clean,
    noise: tuple[float, torch.Generator],
    opts: SimulationOptions,
) -> tuple[list[Path], list[str]]:
    """Noisy images into each ``(file name, first, stop)`` stack; (stack paths, image names)."""
    box, pixel_size = geometry
    sigma, noise_gen = noise
    stack_paths: list[Path] = []
    names: list[str] = []
    n = stacks[-1][2] if stacks else 0
    with tqdm(total=n, desc="simulate", unit="img", disable=not opts.progress) as bar:
        for fname, first, stop in stacks:
            path = out / fname
            with StackWriter(path, stop - first, box, pixel_size) as writer:
                for start in range(first, stop, opts.batch_size):
                    end = min(stop, start + opts.batch_size)
                    img = clean(start, end).cpu()
                    if sigma > 0:
                        img = img + sigma * torch.randn(img.shape, generator=noise_gen)
                    writer.write(img.numpy())
                    bar.update(end - start)
            stack_paths.append(path)
            names.extend(f"{i + 1:06d}@{fname}" for i in range(stop - first))
    return stack_paths, names


def project_particles(
    map_path: str | os.PathLike,
    particles_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    projector: str = "fourier",
    use_ctf: bool | None = None,
    datadir: str | os.PathLike | None = None,
    angpix: float | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Project a map at the orientations, origins and CTFs of a particle file (like relion_project).

    Parameters
    ----------
    map_path
        MRC map, cubic, with the particles' box and pixel size (within 1 %).
    particles_path
        RELION STAR or cryoSPARC ``.cs`` with orientations.
    out_path
        Output ``.mrcs`` (written atomically, streamed in batches).
    use_ctf
        Apply each particle's CTF (default: when the file has CTF parameters).
    datadir, angpix
        As for :func:`cryograd.io.registry.read_particles`.

    Raises
    ------
    CryogradError
        Bad map, particles without orientations, box or pixel size mismatch, CTF asked for but
        absent; nothing is written then.
    """
    out = Path(out_path)
    if not out.parent.is_dir():
        raise CryogradError(f"{out}: output folder {out.parent} does not exist")
    if out.is_dir():
        raise CryogradError(f"{out}: is a folder; give the output .mrcs file")
    mapdata = read_map(map_path)
    vol = mapdata.data
    validate_volume(vol, str(map_path))
    ps = read_particles(particles_path, datadir=datadir, angpix=angpix)
    if len(ps) == 0:
        raise CryogradError(f"{particles_path}: no particles")
    if ps.rotations is None:
        raise CryogradError(f"{particles_path}: no orientations (rlnAngleRot/Tilt/Psi) to project")
    box = vol.shape[0]
    if ps.box_size is not None and int(ps.box_size) != box:
        raise CryogradError(
            f"{map_path}: map box {box} differs from the particles' box {ps.box_size} "
            f"({particles_path})"
        )
    sizes = ps.pixel_sizes_angstrom
    pixel = float(ps.pixel_size_angstrom)
    if np.any(np.abs(sizes - pixel) > 0.01 * pixel):
        raise CryogradError(
            f"{particles_path}: optics groups have different pixel sizes "
            f"({sizes.min():.4g}-{sizes.max():.4g} Å); project each group separately"
        )
    voxel = float(mapdata.voxel_size_angstrom)
    if voxel > 0 and abs(voxel - pixel) > 0.01 * pixel:
        raise CryogradError(
            f"{map_path}: voxel size {voxel:.4g} Å differs from the particles' pixel size "
            f"{pixel:.4g} Å by more than 1% ({particles_path})"
        )
    if voxel <= 0:
        logger.warning("%s: header has no voxel size; using the particles' %.4g Å", map_path, pixel)
    if use_ctf is None:
        use_ctf = ps.has_ctf
    if use_ctf and not ps.has_ctf:
        raise CryogradError(f"{particles_path}: --ctf asked for but the file has no CTF parameters")
    check_metadata(ps, use_ctf=use_ctf)
    if projector not in ("fourier", "real"):
        raise CryogradError(f"unknown projector {projector!r}: use 'fourier' or 'real'")
    if batch_size < 1:
        raise CryogradError(f"batch size must be at least 1, got {batch_size}")

    device = torch.device(device) if device is not None else torch.device("cpu")
    model = ForwardModel(box, pixel, projector)
    vol_t = torch.from_numpy(np.ascontiguousarray(vol)).to(device)
    n = len(ps)
    shifts = ps.shifts_px if ps.shifts_px is not None else np.zeros((n, 2))
    with (
        StackWriter(out, n, box, pixel) as writer,
        tqdm(total=n, desc="project", unit="img", disable=not progress) as bar,
    ):
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            rot = torch.from_numpy(ps.rotations[idx]).to(device=device, dtype=torch.float32)
            sh = torch.from_numpy(shifts[idx]).to(device=device, dtype=torch.float32)
            ctf = ps.ctf_params(idx, device=device) if use_ctf else None
            optics = ps.particle_optics(idx, device=device)
            writer.write(model.project(vol_t, rot, sh, ctf, optics=optics).cpu().numpy())
            bar.update(len(idx))
    return out
