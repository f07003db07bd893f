"""Fourier insertion: the two sums every Fourier-domain solver starts from.

For particles ``b_i`` with poses ``A_i``, origins ``t_i`` and CTFs ``c_i``, two sums are accumulated
on the padded half grid (``P ≈ pad · D``, :func:`cryograd.projectors.fourier_slice.padded_size`) by
the Fourier-slice back-projector's own scatter
(:func:`~cryograd.projectors.fourier_slice.insert_slices`, trilinear, Friedel-mirrored)::

    N(q) = Σ_i insert( c_i · ramp(+t_i) · rfft2_centered(b_i) )        (numerator, complex)
    W(q) = Σ_i insert( c_i² )                                           (weights, real)

Images whose CTF is premultiplied (``rlnCtfDataAreCtfPremultiplied``) are inserted as they are, with
the same ``c_i²`` weights. Without CTF correction ``c_i = 1``. Samples of the ``kx = 0`` column of
each image (whose Friedel mates are also stored) enter with weight ½, as in the projector's adjoint,
and the ``qx = 0`` (and Nyquist) planes of the 3D half grid get their mirrored contributions added,
so ``N`` and ``W`` are the full-grid sums. The direct solver divides them
(:mod:`cryograd.solvers.direct`); CG builds its Toeplitz normal operator from ``W`` and its
right-hand side from ``N`` (:mod:`cryograd.solvers.normal`).

Backends: each batch goes through :meth:`FourierSliceProjector.insert
<cryograd.projectors.fourier_slice.projector.FourierSliceProjector.insert>`, whose backend
(:func:`cryograd.projectors.backend.select_backend`) is the compiled C loop or ``index_add_`` on the
CPU, and on CUDA one fused Triton insertion that computes the CTF from its parameters, the shift
ramp and the ½-column factor in the kernel. The compiled CPU loop does the same on all threads
(``torch.get_num_threads()``; the grid is split into slabs, no atomics) into one packed grid of
``(re, im, weight)`` cells, which the compiled fold (also on all threads) splits into ``N`` and
``W``; no ``batch × D²`` CTF or ramp arrays are made. On two or more threads a worker thread reads
and transforms the next batch while the loop inserts the current one, so that only the first
batch's reading and the fold are left between the threaded parts. This module is the only solver
code that inserts.

Each process inserts its shard of every global batch; the grids are summed with
``comm.all_reduce_sum_`` once at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cryograd.distributed import single_process
from cryograd.fourier import rfft2_centered
from cryograd.projectors import fourier_slice as fs
from cryograd.projectors.fourier_slice import _cpu as fs_cpu
from cryograd.projectors.fourier_slice.projector import FourierSliceProjector
from cryograd.solvers.batches import ParticleBatch, global_batches, load_batch
from cryograd.solvers.context import RunContext
from cryograd.solvers.ewald import insert_ewald
from cryograd.solvers.particle_weights import weighted_inputs
from cryograd.validation import apply_shell_weights, shell_sums

__all__ = [
    "FourierInsertion",
    "insert_particles",
    "insert_in_context",
    "padded_shell_index",
    "shell_regularizer",
    "weight_shell_sums",
    "default_regularizer",
    "insertion_memory_bytes",
    "lam_to_wiener",
    "wiener_to_lam",
    "band_limit",
    "data_sum",
    "with_data_mean",
]

logger = logging.getLogger(__name__)


@dataclass
class FourierInsertion:
    """The two insertion sums of a set of particles on the padded half grid.

    Attributes
    ----------
    numerator
        ``(P, P, P // 2 + 1)`` complex ``Σ c · ramp · FFT(b)`` (full-grid sums, see module doc).
    weights
        ``(P, P, P // 2 + 1)`` real ``Σ c²``.
    box_size, padded
        ``D`` and ``P``.
    n_particles
        Particles inserted (before symmetry expansion).
    max_shell
        The resolution limit the samples were inserted with (``D``-grid shells), or None.
    """

    numerator: torch.Tensor
    weights: torch.Tensor
    box_size: int
    padded: int
    n_particles: int
    max_shell: int | None = None

    def __add__(self, other: FourierInsertion) -> FourierInsertion:
        if (self.box_size, self.padded) != (other.box_size, other.padded):
            raise ValueError("cannot add insertions of different grids")
        return FourierInsertion(
            self.numerator + other.numerator,
            self.weights + other.weights,
            self.box_size,
            self.padded,
            self.n_particles + other.n_particles,
            _combined_shell(self.max_shell, other.max_shell),
        )

    def accumulate_(self, other: FourierInsertion) -> FourierInsertion:
        """Add ``other``'s sums into this insertion's, in place (no third pair of grids);
        returns ``self``, which then holds both sets."""
        if (self.box_size, self.padded) != (other.box_size, other.padded):
            raise ValueError("cannot add insertions of different grids")
        self.numerator += other.numerator
        self.weights += other.weights
        self.n_particles += other.n_particles
        self.max_shell = _combined_shell(self.max_shell, other.max_shell)
        return self


def _combined_shell(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None if a is None and b is None else (a if b is None else b)
    return max(a, b)


def insertion_memory_bytes(box_size: int, pad: float = 2.0, *, dtype=torch.float32) -> int:
    """Bytes the insertion grids of one half set take (numerator, weights, folded copies)."""
    p = fs.padded_size(box_size, pad)
    ext = (p + 2) ** 2 * (p // 2 + 2)
    real = torch.finfo(dtype).bits // 8
    # two complex extended accumulators + folded numerator/weights + working copies
    return int(ext * 2 * real * 2 + p * p * (p // 2 + 1) * real * 2 * 3)


def _half_column_factor(box_size: int, device, dtype) -> torch.Tensor:
    """``c / 2`` of the 2D half grid: ½ on the ``kx = 0`` (and Nyquist) column, 1 elsewhere."""
    c = torch.ones(box_size // 2 + 1, device=device, dtype=dtype)
    c[0] = 0.5
    if box_size % 2 == 0:
        c[-1] = 0.5
    return c


def _symmetrize_planes(spectrum: torch.Tensor, padded: int) -> torch.Tensor:
    """Add the mirrored contributions on the ``qx = 0`` (and Nyquist) planes: ``X + conj X(-q)``
    (in place: only those planes change)."""
    cols = [0] + ([padded // 2] if padded % 2 == 0 else [])
    for col in cols:
        plane = spectrum[..., col]
        mirrored = torch.roll(torch.flip(plane, (0, 1)), shifts=(1, 1), dims=(0, 1))
        spectrum[..., col] = plane + torch.conj(mirrored)
    return spectrum


def insert_particles(
    particles,
    indices: np.ndarray,
    *,
    pad: float = 2.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    use_ctf: bool = True,
    symmetry: torch.Tensor | None = None,
    max_shell: int | None = None,
    comm=None,
    progress: bool | str = True,
    particle_weights: np.ndarray | None = None,
) -> FourierInsertion:
    """Insert particles ``indices`` of a set into the padded Fourier grid.

    Parameters
    ----------
    particles
        :class:`cryograd.particles.ParticleSet` with poses (and CTFs unless ``use_ctf`` is false).
    indices
        ``(n,)`` particle indices (the global list; each process takes its shard of each batch).
    pad
        Padding factor of the 3D grid.
    device, dtype
        Where and in which real precision to compute (float32 or float64).
    batch_size
        Particles per global batch (default: the projector's chunk size).
    use_ctf
        Weight by the CTF (false: ``c = 1``).
    symmetry
        ``(G, 3, 3)`` symmetry operators (:func:`cryograd.symmetry.symmetry_matrices`): each
        particle is also inserted at the poses ``A Rᵀ``.
    max_shell
        Leave out image samples beyond this shell (in ``D``-grid units) — for ``maxres``.
    comm
        :class:`cryograd.distributed.Communicator` (default: one process).
    progress
        Show a tqdm bar over particles (on the main process only); a string is the bar's
        description (default ``"insert"``).
    particle_weights
        ``(N,)`` weights of every particle of the set (indexed like the set), or None: each
        particle's numerator and ``c²`` weights are multiplied by its weight
        (:func:`cryograd.solvers.particle_weights.weighted_inputs`).

    Returns
    -------
    FourierInsertion
    """
    comm = comm or single_process(device)
    d = int(particles.box_size)
    p = fs.padded_size(d, pad)
    n_sym = 1 if symmetry is None else int(symmetry.shape[0])
    projector = FourierSliceProjector(d, pad=pad)
    backend = projector.backend(device)
    if batch_size is None:
        batch_size = projector.default_batch_size(backend)
        if backend != "triton":  # symmetry copies are inserted together off the Triton path
            batch_size = max(1, batch_size // n_sym)
    sym = None if symmetry is None or n_sym == 1 else symmetry.to(device=device, dtype=dtype)
    ewald = getattr(particles, "ewald", None)
    num_acc, w_acc = projector.new_accumulators(device, dtype, packed=ewald is None)
    col = _half_column_factor(d, device, dtype)
    keep = None
    if max_shell is not None:
        kx = torch.fft.rfftfreq(d, d=1.0 / d, device=device, dtype=dtype)
        ky = torch.fft.fftfreq(d, d=1.0 / d, device=device, dtype=dtype)
        keep = (ky[:, None] ** 2 + kx[None, :] ** 2 <= float(max_shell) ** 2).to(dtype)
        col = col * keep
    indices = np.asarray(indices, dtype=np.int64)
    bar = tqdm(
        total=len(indices),
        desc=progress if isinstance(progress, str) else "insert",
        unit="ptcl",
        disable=not (progress and comm.is_main),
        leave=False,
    )
    loading = _BatchLoading(device, dtype, use_ctf, particle_weights, spectra=ewald is None)
    # the compiled loop lets go of the GIL: the next batch is read and transformed meanwhile
    ahead = backend == "cpu" and ewald is None and fs_cpu.threads() > 1
    ref = float(particles.pixel_size_angstrom)
    batches = _loaded_batches(particles, indices, batch_size, comm, loading, ahead=ahead)
    try:
        for n_global, batch, spectra in batches:
            if batch is not None:
                _insert_batch(projector, batch, spectra, ewald, ref, (num_acc, w_acc), col, sym)
            bar.update(n_global)
    finally:
        batches.close()  # an error: the worker's batch is awaited before it goes on
        bar.close()
    numerator, weights = projector.fold_accumulators(num_acc, w_acc)
    assert weights is not None
    del num_acc, w_acc
    comm.all_reduce_sum_(numerator)
    comm.all_reduce_sum_(weights)
    numerator = _symmetrize_planes(numerator, p)
    weights = _symmetrize_planes(weights, p)
    return FourierInsertion(
        numerator, weights, d, p, int(len(indices)), None if max_shell is None else int(max_shell)
    )


@dataclass(frozen=True)
class _BatchLoading:
    """How :func:`insert_particles` reads its batches: device and real dtype, CTF use, the set's
    ``(N,)`` particle weights or None, and whether to take the images' half spectra too
    (``(b, D, D // 2 + 1)``, :func:`rfft2_centered`; not for the Ewald path, which transforms
    in float64 itself)."""

    device: torch.device | str
    dtype: torch.dtype
    use_ctf: bool
    particle_weights: np.ndarray | None
    spectra: bool


class _SpectraMemory:
    """Memory reused for the half spectra of successive batches (and the shifted images they
    are transformed from): allocated once per :func:`insert_particles` and slot, with NumPy's
    allocator on the CPU (huge pages), so that the FFTs of each batch fault no fresh pages."""

    def __init__(self) -> None:
        self.work: torch.Tensor | None = None
        self.spectra: torch.Tensor | None = None

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """``rfft2_centered(images)`` ``(b, D, D // 2 + 1)``, a view of this slot's memory."""
        b, d = images.shape[0], images.shape[-1]
        cdtype = torch.complex128 if images.dtype == torch.float64 else torch.complex64
        if self.work is None or self.work.shape[0] < b or self.work.dtype != images.dtype:
            self.work = _empty((b, d, d), images.dtype, images.device)
            self.spectra = _empty((b, d, d // 2 + 1), cdtype, images.device)
        assert self.spectra is not None
        return rfft2_centered(images, out=self.spectra[:b], work=self.work[:b])


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """Uninitialised memory: from NumPy on the CPU (huge pages for large arrays), else torch."""
    if torch.device(device).type == "cpu":
        return fs_cpu.host_empty(shape, dtype)
    return torch.empty(shape, dtype=dtype, device=device)


def _load(particles, local: np.ndarray, loading: _BatchLoading, memory: _SpectraMemory):
    """``(batch, spectra)`` of this process's particles ``local`` (spectra None unless asked;
    in ``memory``, valid until that slot is used again)."""
    batch = load_batch(
        particles,
        local,
        device=loading.device,
        dtype=loading.dtype,
        use_ctf=loading.use_ctf,
        ctf_values=False,
    )
    if loading.particle_weights is not None:
        batch = weighted_inputs(batch, loading.particle_weights[local])
    return batch, (memory.transform(batch.images) if loading.spectra else None)


def _loaded_batches(
    particles, indices: np.ndarray, batch_size: int, comm, loading: _BatchLoading, *, ahead: bool
) -> Generator[tuple[int, ParticleBatch | None, torch.Tensor | None], None, None]:
    """``(particles in the global batch, batch, spectra)`` of each global batch (batch and
    spectra None where this process has no share of it).

    A batch's spectra live in reused memory: the caller is done with them when it asks for the
    next batch. With ``ahead``, one worker thread reads and transforms the next batch while the
    caller inserts the current one (torch and the compiled loop release the GIL), so that the
    reading and the FFTs overlap the insertion instead of running between its calls on one
    core; one more batch is held (images and spectra, about 33 MB at any box: batches hold
    ~2 M samples).
    """
    work = [(len(g), comm.shard(g)) for g in global_batches(indices, batch_size)]
    slots = [_SpectraMemory() for _ in range(2 if ahead else 1)]

    def load(k: int):
        local = work[k][1]
        return (
            _load(particles, local, loading, slots[k % len(slots)]) if len(local) else (None, None)
        )

    if not ahead:
        for k, (n_global, _) in enumerate(work):
            yield (n_global, *load(k))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryograd-read") as pool:
        pending = pool.submit(load, 0) if work else None
        for k, (n_global, _) in enumerate(work):
            assert pending is not None
            batch, spectra = pending.result()  # batch k - 1 is done with: its slot is free
            pending = pool.submit(load, k + 1) if k + 1 < len(work) else None
            yield n_global, batch, spectra


def _insert_batch(projector, batch, spectra, ewald, reference_pixel, grids, col, sym) -> None:
    """One batch into the accumulators: the projector's insertion of its half ``spectra``, or
    the Ewald-sphere one (curved P/Q insertion on the torch reference path)."""
    num_acc, w_acc = grids
    if ewald is not None:
        insert_ewald(batch, ewald, reference_pixel, grids, projector.padded_size, sym)
        return
    projector.insert(
        spectra,
        batch.rotations,
        num_acc,
        w_acc,
        ctf=batch.ctf if batch.ctf is not None else batch.ctf_params,
        shifts_px=batch.shifts_px,
        pixel_size_angstrom=batch.pixel_sizes_angstrom,
        premultiplied=batch.premultiplied,
        sample_weights=col,
        symmetry=sym,
        optics=batch.optics,
    )


def insert_in_context(
    particles,
    indices: np.ndarray,
    context: RunContext,
    *,
    pad: float = 2.0,
    batch_size: int | None = None,
    max_shell: int | None = None,
    progress: bool = True,
    desc: str = "insert",
) -> FourierInsertion:
    """:func:`insert_particles` with the device, dtype, CTF use, symmetry and communicator of a
    :class:`~cryograd.solvers.context.RunContext`."""
    return insert_particles(
        particles,
        indices,
        pad=pad,
        device=context.device,
        dtype=context.dtype,
        batch_size=batch_size,
        use_ctf=context.use_ctf,
        symmetry=context.symmetry,
        max_shell=max_shell,
        comm=context.comm,
        progress=desc if progress else False,
        particle_weights=context.particle_weights,
    )


def insert_halves_in_context(
    particles,
    halves,
    context: RunContext,
    *,
    pad: float = 2.0,
    batch_size: int | None = None,
    max_shell: int | None = None,
    progress: bool = True,
) -> list[FourierInsertion]:
    """:func:`insert_in_context` of each half (``halves``: the halves' particle indices)."""
    return [
        insert_in_context(
            particles,
            half,
            context,
            pad=pad,
            batch_size=batch_size,
            max_shell=max_shell,
            progress=progress,
            desc=f"insert half {k}",
        )
        for k, half in enumerate(halves, start=1)
    ]


def padded_shell_index(box_size: int, padded: int, *, device=None) -> torch.Tensor:
    """Shell ``round(|q| · D / P)`` (``D``-grid units) of every sample of the padded half grid."""
    key = (int(box_size), int(padded), str(torch.device(device or "cpu")))
    cached = _SHELL_CACHE.get(key)
    if cached is None:
        cached = _padded_shell_index(box_size, padded, device)
        _SHELL_CACHE.clear()  # keep one grid: they are large
        _SHELL_CACHE[key] = cached
    return cached


_SHELL_CACHE: dict[tuple, torch.Tensor] = {}


def _padded_shell_index(box_size: int, padded: int, device) -> torch.Tensor:
    """int32 shells, computed one ``z`` plane at a time (no float64 grid temporaries)."""
    k = torch.fft.fftfreq(padded, d=1.0 / padded, device=device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(padded, d=1.0 / padded, device=device, dtype=torch.float64)
    r2_yx = k.view(-1, 1) ** 2 + kx.view(1, -1) ** 2
    out = torch.empty((padded, padded, kx.numel()), device=device, dtype=torch.int32)
    for z in range(padded):
        out[z] = torch.round(torch.sqrt(r2_yx + k[z] ** 2) * (box_size / padded))
    return out


def weight_shell_sums(insertion: FourierInsertion) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the ``Σ c²`` weights per shell ``0 .. D // 2`` (for RELION's ``τ²``)."""
    shells = padded_shell_index(
        insertion.box_size, insertion.padded, device=insertion.weights.device
    )
    return shell_sums(insertion.weights, shells, insertion.box_size // 2 + 1)


def shell_regularizer(
    insertion: FourierInsertion, regularizer: float | torch.Tensor
) -> tuple[torch.Tensor | float, torch.Tensor | None]:
    """``ρ`` on the padded half grid: a constant as it is, or ``(D // 2 + 1,)`` values per shell
    spread over the grid (samples beyond the last shell use its value). Returns ``(ρ, shells)``,
    ``shells`` the grid's shell index when it was needed, else None."""
    w = insertion.weights
    if isinstance(regularizer, torch.Tensor) and regularizer.numel() > 1:
        shells = padded_shell_index(insertion.box_size, insertion.padded, device=w.device)
        reg_shell = regularizer.to(device=w.device, dtype=w.dtype).reshape(-1)
        return reg_shell[shells.clamp(max=reg_shell.numel() - 1)], shells
    return float(regularizer), None


def default_regularizer(insertion: FourierInsertion) -> float:
    """A small Wiener term, ``1e-3 ·`` the mean weight of the samples inside Nyquist (inside the
    insertion's resolution limit when it has one, so that ``maxres`` does not shrink it)."""
    return regularizer_from_shell_sums(*weight_shell_sums(insertion), insertion.max_shell)


def regularizer_from_shell_sums(
    sums: torch.Tensor, counts: torch.Tensor, max_shell: int | None
) -> float:
    """:func:`default_regularizer` from the per-shell weight sums and counts ``(D // 2 + 1,)``."""
    if max_shell is not None:
        top = max(0, min(int(max_shell), sums.numel() - 1)) + 1
        sums, counts = sums[:top], counts[:top]
    mean_w = float(sums.sum() / counts.sum().clamp_min(1.0))
    return 1e-3 * max(mean_w, 1e-12)


def lam_to_wiener(lam: float, box_size: int, padded: int) -> float:
    """The Wiener term ``ρ = λ D² / P³`` equal to the operator regulariser ``λ``: with the Fourier
    projector ``AᵀA ≈ (P³ / D²) · G · crop · irfftn(W ·)``, so ``λ`` in operator units is
    ``λ D² / P³`` in the units of the weights ``W``."""
    return float(lam) * box_size**2 / padded**3


def wiener_to_lam(rho: float, box_size: int, padded: int) -> float:
    """The operator regulariser ``λ = ρ P³ / D²`` of a Wiener term (inverse of
    :func:`lam_to_wiener`)."""
    return rho * padded**3 / box_size**2


def band_limit(volume: torch.Tensor, max_shell: int) -> torch.Tensor:
    """``volume`` with every Fourier shell beyond ``max_shell`` (``D``-grid units) zeroed."""
    w = (torch.arange(volume.shape[-1] // 2 + 1) <= max_shell).double()
    return apply_shell_weights(volume, w)


def data_sum(insertion: FourierInsertion, wiener_rho: float = 0.0) -> float | None:
    """The map's sum ``Σ_r x(r)`` measured by the images themselves: ``Re N(0) / (W(0) + ρ)``.

    Every image's ``k = 0`` sample is the sum of the particle's projection, i.e. of the volume,
    times ``CTF(0)`` (the amplitude contrast), and lands on the origin of the 3D grid exactly, so
    ``N(0) / W(0)`` is the CTF-weighted average of those sums (``ρ``, the Wiener term at the
    origin, shrinks it as it shrinks every other sample). None when ``W(0)`` is too small to say
    (CTF with no amplitude contrast, or no particles).
    """
    w0 = float(insertion.weights[0, 0, 0])
    mean_w = float(insertion.weights.mean())
    if not w0 > 1e-6 * max(mean_w, 1e-30):
        return None
    return float(insertion.numerator[0, 0, 0].real) / (w0 + float(wiener_rho))


def with_data_mean(
    volume: torch.Tensor, insertion: FourierInsertion, wiener_rho: float = 0.0
) -> torch.Tensor:
    """``volume`` with its sum set to :func:`data_sum` (unchanged when that is None).

    The plain division estimates each voxel of the padded grid from the samples within one voxel
    of it; next to the origin (``0 < |q| < P / D``) those are the first ring's only, so after
    cropping the map's mean comes out 30–40 % low while the shells ``k ≥ 1`` are right (see
    :mod:`cryograd.solvers.direct`). Setting the ``k = 0`` term from the origin's own samples
    corrects exactly that term, with no support constraint and no added noise.
    """
    target = data_sum(insertion, wiener_rho)
    if target is None:
        return volume
    return volume + (target - float(volume.sum(dtype=torch.float64))) / volume.numel()
