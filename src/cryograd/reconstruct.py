"""``cryograd.reconstruct``: particles in, a map with gold-standard half maps and FSC out.

The particles are split into two half sets (``rlnRandomSubset`` when present, else a seeded random
split); each half is reconstructed independently with the chosen method, the FSC of the half maps
is computed unmasked and with a soft mask (the one given, or one made from the map) corrected by
phase randomisation, the resolution is read at FSC 0.143, and the final map is the full
reconstruction weighted per shell by ``sqrt(2·FSC / (1 + FSC))``.

Methods (:mod:`cryograd.solvers`):

- ``direct``: Fourier insertion and Wiener division. The Wiener term is ``(D/P)³ / snr`` with a
  constant ``snr`` (per Fourier voxel of the unpadded grid), ``λ D²/P³`` for an operator ``lam``,
  or by default RELION's ``1/τ²`` from the FSC of the half maps reconstructed first with a tiny
  term (those halves, not Wiener-filtered but refined like the full map, are the half maps
  reported). A constant ``snr`` must be positive. The full map's grids are the sum of
  the halves' (one pass over the data).
- ``cg``: ``(AᵀA + λI) x = Aᵀb`` per half and for the full set (Toeplitz operator from one
  insertion pass with the Fourier projector).
- ``adam`` / ``sgd``: minibatch optimisation per half (:mod:`cryograd.solvers.gradient`); the full
  map is the mean of the two half maps (each already uses its own validation split). With
  ``init="direct"`` each half starts from the direct map of its *training* particles only.

``maxres``: frequencies beyond it are left out, the FSC curves are set to 0 beyond it and the
reported resolutions are never finer than it.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryograd.errors import CryogradError

__all__ = ["Result", "reconstruct", "METHODS", "estimate_memory_bytes", "select_particles"]

logger = logging.getLogger(__name__)

METHODS = ("direct", "cg", "adam", "sgd")


@dataclass
class Result:
    """A reconstruction with its validation.

    Attributes
    ----------
    map
        ``(D, D, D)`` final map (full reconstruction, FSC-weighted), float32 tensor on the CPU.
    full_map
        The full reconstruction before FSC weighting.
    half_maps
        ``(half1, half2)``.
    fsc
        :class:`cryograd.validation.FSCResult` of the half maps.
    resolution_angstrom
        Resolution at FSC 0.143 (from the corrected masked FSC when a mask was used).
    pixel_size_angstrom
        Voxel size.
    method
        The method used.
    n_particles
        Particles used (both halves).
    mask
        The mask of the masked FSC, or None.
    history
        Per-method record (CG iterations, losses per epoch, best epochs, ...).
    timings
        Seconds per stage.
    """

    map: torch.Tensor
    full_map: torch.Tensor
    half_maps: tuple[torch.Tensor, torch.Tensor]
    fsc: object
    resolution_angstrom: float
    pixel_size_angstrom: float
    method: str
    n_particles: int
    mask: torch.Tensor | None = None
    history: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)

    def save(self, outdir: str | Path, *, extra: dict | None = None) -> dict[str, Path]:
        """Write ``map.mrc``, ``half1.mrc``, ``half2.mrc``, ``fsc.csv``, ``fsc.png``, ``loss.png``
        (iterative methods) and ``run.json`` into ``outdir``, each atomically."""
        from cryograd.io.mrc import write_map
        from cryograd.plots import plot_fsc_result, plot_loss

        out = Path(outdir)
        out.mkdir(parents=True, exist_ok=True)
        px = self.pixel_size_angstrom
        paths = {
            "map": write_map(out / "map.mrc", _np(self.map), px),
            "half1": write_map(out / "half1.mrc", _np(self.half_maps[0]), px),
            "half2": write_map(out / "half2.mrc", _np(self.half_maps[1]), px),
            "fsc_csv": self.fsc.to_csv(out / "fsc.csv"),
            "fsc_png": plot_fsc_result(
                out / "fsc.png", self.fsc, title=f"{self.method}: {self.resolution_angstrom:.2f} Å"
            ),
        }
        if self.method in ("adam", "sgd"):
            h = self.history.get("half1", {})
            if h.get("train_loss"):
                paths["loss_png"] = plot_loss(
                    out / "loss.png",
                    h["train_loss"],
                    h.get("val_loss"),
                    best_epoch=h.get("best_epoch"),
                    first_epoch=0,  # the lists start with the starting map (epoch 0)
                    title=f"{self.method} (half 1)",
                )
        info = {
            "method": self.method,
            "particles": self.n_particles,
            "box_size": int(self.map.shape[-1]),
            "pixel_size_angstrom": px,
            "resolution_143_angstrom": _finite(self.resolution_angstrom),
            "resolution_05_angstrom": _finite(self.fsc.resolution_05_angstrom),
            "fsc": self.fsc.to_dict(),
            "parameters": self.parameters,
            "history": self.history,
            "timings_s": self.timings,
            "versions": _versions(),
        }
        if extra:
            info.update(extra)
        paths["run_json"] = _write_json_atomic(out / "run.json", info)
        return paths


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _versions() -> dict:
    import cryograd

    return {
        "cryograd": cryograd.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def json_safe(obj):
    """``obj`` with tensors/arrays as lists and every non-finite float (NaN, ±inf) as ``None``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _write_json_atomic(path: Path, data: dict) -> Path:
    """Strict JSON (no NaN/Infinity tokens: non-finite numbers are written as ``null``),
    atomically, with the mode of a new file (:func:`cryograd.io.atomic.atomic_path`)."""
    from cryograd.io.atomic import atomic_path

    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def select_particles(
    particles, *, first: int | None = None, class_number: int | None = None, use_ctf: bool = True
) -> np.ndarray:
    """Indices of the particles to use, after checking poses, CTFs and images.

    Raises
    ------
    CryogradError
        No poses (naming the missing columns), no CTF without ``use_ctf=False``, no image, no
        particle left after ``class_number`` / ``first``.
    """
    src = particles.path or "particles"
    if particles.rotations is None:
        raise CryogradError(
            f"{src}: particles have no poses (missing columns rlnAngleRot, rlnAngleTilt, "
            "rlnAnglePsi, or alignments3D/pose in a .cs file); reconstruction needs them"
        )
    if use_ctf and not particles.has_ctf:
        raise CryogradError(
            f"{src}: particles have no CTF parameters (rlnDefocusU, rlnDefocusV, rlnDefocusAngle, "
            "rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast); use --no-ctf to "
            "reconstruct without CTF correction"
        )
    if particles.box_size is None:
        raise CryogradError(f"{src}: the box size is unknown (no rlnImageSize and no images)")
    idx = np.arange(len(particles))
    if class_number is not None:
        if particles.class_number is None:
            raise CryogradError(
                f"{src}: --class {class_number} given but there is no rlnClassNumber column"
            )
        idx = idx[particles.class_number[idx] == int(class_number)]
        if len(idx) == 0:
            raise CryogradError(f"{src}: no particle has rlnClassNumber {class_number}")
    if first is not None:
        if first < 2:
            raise CryogradError(f"--first must be at least 2, got {first}")
        idx = idx[: int(first)]
    if len(idx) < 2:
        raise CryogradError(f"{src}: need at least 2 particles, found {len(idx)}")
    return idx


def estimate_memory_bytes(
    box_size: int,
    method: str,
    pad: float = 2.0,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Rough peak memory of a reconstruction (grids of one half set, both halves kept, batches)."""
    from cryograd.projectors import fourier_slice as fs
    from cryograd.solvers.direct import insertion_memory_bytes

    real = torch.finfo(dtype).bits // 8
    d = int(box_size)
    p = fs.padded_size(d, pad)
    grids = insertion_memory_bytes(d, pad, dtype=dtype)
    kept = 2 * p * p * (p // 2 + 1) * real * 3  # numerator + weights of both halves
    vol = 8 * d**3 * real
    batch = batch_size * d * d * real * 12
    if method in ("adam", "sgd"):
        fft = p**3 * real * 6
        return int(fft + vol * 4 + batch * 4)
    if method == "cg":
        return int(grids + kept + p**3 * real * 4 + vol * 8 + batch)
    return int(grids + kept + vol + batch)


def _available_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(
    box_size: int,
    method: str,
    pad: float,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> int:
    """Raise CryogradError when the estimated need exceeds the device's free memory."""
    need = estimate_memory_bytes(box_size, method, pad, batch_size, dtype)
    have = _available_memory_bytes(device)
    if have is not None and need > have:
        device = torch.device(device)
        raise CryogradError(
            f"box {box_size} with --method {method} --pad {pad:g} needs about "
            f"{need / 2**30:.1f} GiB but {device} has {have / 2**30:.1f} GiB free; "
            + (
                "try --pad 1, a smaller --batch-size, or --device cpu"
                if device.type != "cpu"
                else "try --pad 1 or a smaller --batch-size, or a machine with more memory"
            )
        )
    return need


def _resolve_device(device) -> torch.device:
    from cryograd.distributed import resolve_device

    if isinstance(device, torch.device):
        return device
    return resolve_device(device or "auto")


def reconstruct(
    particles,
    method: str = "direct",
    *,
    projector: str = "fourier",
    pad: float = 2.0,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    first: int | None = None,
    class_number: int | None = None,
    sym: str = "C1",
    seed: int = 0,
    maxres: float | None = None,
    snr: float | None = None,
    lam: float | None = None,
    use_ctf: bool = True,
    mask=None,
    refine: int = 3,
    cg_tol: float = 1e-5,
    cg_max_iter: int = 200,
    epochs: int = 10,
    lr: float | None = None,
    loss: str = "l2",
    penalty: str = "none",
    sorted_l1_sequence: str = "bh",
    sorted_l1_q: float = 0.1,
    huber_delta: float | None = None,
    val_fraction: float = 0.05,
    patience: int = 3,
    init: str = "direct",
    lr_schedule: str = "constant",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    comm=None,
    progress: bool = True,
) -> Result:
    """Reconstruct a map from particles with poses, with gold-standard half maps and FSC.

    Parameters
    ----------
    particles
        :class:`cryograd.particles.ParticleSet` (or a path, read with ``read_particles``).
    method
        ``"direct"``, ``"cg"``, ``"adam"`` or ``"sgd"``.
    projector, pad
        Forward model of the iterative methods and padding of the Fourier grids.
    device, dtype
        ``"auto"``, ``"cpu"``, ``"cuda[:N]"``; float32 or float64.
    batch_size
        Particles per global batch (default: 128 for adam/sgd, the projector's chunk otherwise).
    first, class_number
        Use the first N particles / those of one ``rlnClassNumber``.
    sym
        Point group (``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I``): poses are expanded by it.
    seed
        Seed of the half-set split (without ``rlnRandomSubset``), validation split and shuffles.
    maxres
        Leave out frequencies beyond this resolution in Å.
    snr, lam
        Wiener term of ``direct`` (constant SNR, or operator ``λ``); ``λ`` of ``cg`` (default from
        ``snr``, else ``1e-2`` of the mean CTF² weight); for adam/sgd ``lam`` weighs the penalty.
    use_ctf
        False reconstructs without CTF correction (``--no-ctf``).
    mask
        ``(D, D, D)`` array, a path to an MRC mask, or None (soft mask from the map).
    refine
        ``direct``: preconditioned CG iterations on the full map after the division
        (:func:`cryograd.solvers.cg.refine_in_box`), which restore the low-frequency power the
        division loses outside the box; 0 gives the plain division.
    cg_tol, cg_max_iter
        CG stopping rule.
    epochs, lr, loss, penalty, sorted_l1_sequence, sorted_l1_q, huber_delta, val_fraction,
    patience, init, lr_schedule
        Iterative methods (see :func:`cryograd.solvers.gradient.train`); ``init`` is ``"direct"``
        (the direct map of each half's training particles, refined as ``direct`` refines) or
        ``"zero"``; ``lr_schedule`` ``"constant"`` or ``"cosine"``. ``huber_delta`` is the Huber
        threshold in image intensity units; by default (None) ``δ = 1.345 · σ̂`` with ``σ̂`` the
        robust (MAD) noise level of the starting map's residuals on the training particles
        (of the images themselves with ``init="zero"``), the classic 95 %-efficiency choice.
    checkpoint_dir, resume
        Where adam/sgd checkpoint after every epoch, and whether to continue from there.
    comm
        :class:`cryograd.distributed.Communicator` (default: one process).

    Returns
    -------
    Result
    """
    from cryograd.distributed import single_process
    from cryograd.symmetry import group_order, symmetry_matrices
    from cryograd.validation import split_halves

    if method not in METHODS:
        raise CryogradError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not 0.0 < val_fraction < 0.5:
        raise CryogradError(f"--val-fraction must be in (0, 0.5), got {val_fraction}")
    if isinstance(particles, str | Path):
        from cryograd.particles import read_particles

        particles = read_particles(particles)
    dev = _resolve_device(device)
    comm = comm or single_process(dev)
    t_start = time.perf_counter()
    idx = select_particles(particles, first=first, class_number=class_number, use_ctf=use_ctf)
    d = int(particles.box_size)
    px = float(particles.pixel_size_angstrom)
    if snr is not None and not (math.isfinite(snr) and snr > 0):
        raise CryogradError(f"--snr must be a positive number, got {snr}")
    if lam is not None and not (math.isfinite(lam) and lam >= 0):
        raise CryogradError(f"--lam must be a non-negative number, got {lam}")
    group_order(sym)  # validates the name
    sym_mats = None if sym.upper() == "C1" else symmetry_matrices(sym, dtype=dtype, device=dev)
    max_shell = None
    if maxres is not None:
        if not maxres > 0:
            raise CryogradError(f"--maxres must be positive, got {maxres}")
        max_shell = int(min(d // 2, math.floor(d * px / maxres)))
    mask_t = _load_mask(mask, d)
    bs = batch_size or (128 if method in ("adam", "sgd") else None)
    check_memory(d, method, pad, bs or 256, dev, dtype)
    half_set = particles.half_set[idx] if particles.half_set is not None else None
    if half_set is not None and np.unique(half_set).size == 1:
        logger.warning(
            "%s: rlnRandomSubset puts all %d selected particles in half %s; using a seeded "
            "random split (--seed %d) instead",
            getattr(particles, "path", "particles"),
            len(idx),
            half_set[0],
            seed,
        )
        half_set = None
    h1_local, h2_local = split_halves(len(idx), seed, half_set)
    halves = (idx[h1_local], idx[h2_local])
    common = dict(device=dev, dtype=dtype, use_ctf=use_ctf, symmetry=sym_mats, comm=comm)
    timings: dict = {}
    history: dict = {}
    params = dict(
        method=method,
        projector=projector,
        pad=pad,
        device=str(dev),
        dtype=str(dtype).replace("torch.", ""),
        batch_size=bs,
        sym=sym,
        seed=seed,
        maxres=maxres,
        snr=snr,
        lam=lam,
        use_ctf=use_ctf,
        particles=len(idx),
        half_sizes=[len(halves[0]), len(halves[1])],
        half_sets="rlnRandomSubset" if half_set is not None else "random",
    )
    logger.info(
        "%s reconstruction of %d particles (box %d, %.4g Å/px), halves %d + %d",
        method,
        len(idx),
        d,
        px,
        len(halves[0]),
        len(halves[1]),
    )

    if method == "direct":
        h1, h2, full = _run_direct(
            particles,
            halves,
            pad,
            bs,
            snr,
            lam,
            max_shell,
            refine,
            progress,
            timings,
            history,
            **common,
        )
        params["refine"] = refine
    elif method == "cg":
        h1, h2, full = _run_cg(
            particles,
            halves,
            projector,
            pad,
            bs,
            snr,
            lam,
            max_shell,
            cg_tol,
            cg_max_iter,
            progress,
            timings,
            history,
            **common,
        )
    else:
        params.update(
            epochs=epochs,
            lr=lr,
            loss=loss,
            penalty=penalty,
            init=init,
            lr_schedule=lr_schedule,
            val_fraction=val_fraction,
            patience=patience,
        )
        h1, h2, full, lr_used = _run_gradient(
            particles,
            halves,
            method=method,
            projector=projector,
            pad=pad,
            batch_size=bs,
            snr=snr,
            lam=lam,
            max_shell=max_shell,
            epochs=epochs,
            lr=lr,
            loss=loss,
            penalty=penalty,
            sorted_l1_sequence=sorted_l1_sequence,
            sorted_l1_q=sorted_l1_q,
            huber_delta=huber_delta,
            val_fraction=val_fraction,
            patience=patience,
            init=init,
            lr_schedule=lr_schedule,
            seed=seed,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
            refine=refine,
            timings=timings,
            history=history,
            **common,
        )
        params["lr"] = lr_used
    result = _validate(
        h1,
        h2,
        full,
        px,
        mask_t,
        seed,
        method,
        len(idx),
        timings,
        history,
        params,
        maxres=maxres,
        max_shell=max_shell,
    )
    timings["total"] = time.perf_counter() - t_start
    return result


def _load_mask(mask, box_size: int) -> torch.Tensor | None:
    if mask is None:
        return None
    if isinstance(mask, str | Path):
        from cryograd.io.mrc import read_map

        data = read_map(mask).data
        name = str(mask)
    else:
        data = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
        name = "mask"
    if data.shape != (box_size,) * 3:
        raise CryogradError(
            f"{name}: mask box {tuple(data.shape)} differs from the particles' box "
            f"{(box_size,) * 3}"
        )
    data = np.asarray(data, dtype=np.float64)
    lo, hi = float(np.min(data)), float(np.max(data))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-4 or hi > 1 + 1e-4:
        raise CryogradError(
            f"{name}: mask values must lie within [0, 1], found values in [{lo:.4g}, {hi:.4g}]"
        )
    return torch.as_tensor(np.clip(data, 0.0, 1.0))


def _run_direct(
    particles,
    halves,
    pad,
    bs,
    snr,
    lam,
    max_shell,
    refine,
    progress,
    timings,
    history,
    *,
    device,
    dtype,
    use_ctf,
    symmetry,
    comm,
):
    from cryograd.solvers import direct as dr
    from cryograd.solvers.cg import refine_in_box
    from cryograd.validation import fsc, inverse_tau2_from_fsc

    t0 = time.perf_counter()
    ins = []
    for k, half in enumerate(halves, start=1):
        ins.append(
            dr.insert_particles(
                particles,
                half,
                pad=pad,
                device=device,
                dtype=dtype,
                batch_size=bs,
                use_ctf=use_ctf,
                symmetry=symmetry,
                max_shell=max_shell,
                comm=comm,
                progress=progress,
                desc=f"insert half {k}",
            )
        )
    timings["insert"] = time.perf_counter() - t0
    full_ins = ins[0] + ins[1]
    d, p = full_ins.box_size, full_ins.padded
    t0 = time.perf_counter()
    if snr is not None or lam is not None:
        reg = ((d / p) ** 3 / float(snr)) if snr is not None else dr.lam_to_wiener(lam, d, p)
        regs = (reg, reg, reg)
        history["wiener"] = {"kind": "constant", "value": reg}
    else:
        # RELION's τ²: FSC of halves with a tiny term, then 1/τ² per shell
        tiny = [dr.default_regularizer(i) for i in ins]
        pre = [dr.wiener_reconstruct(i, t, max_shell=max_shell) for i, t in zip(ins, tiny)]
        f0 = fsc(pre[0], pre[1])
        sums, counts = dr.weight_shell_sums(full_ins)
        reg_full = inverse_tau2_from_fsc(f0, sums, counts, whole_instead_of_half=True)
        history["wiener"] = {"kind": "tau2", "fsc_prior": [float(x) for x in f0]}
        # the FSC (and the half maps written) come from the unfiltered halves, as in RELION;
        # the τ² Wiener filter is for the full map
        full = dr.wiener_reconstruct(full_ins, reg_full, max_shell=max_shell)
        timings["divide"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = _refine(refine_in_box, full_ins, reg_full, full, refine, max_shell)
        # the half maps are refined too (the plain division leaves their mean ~30 % low). Their
        # small Wiener term makes the system stiffer: 3 iterations bring the mean to ~93 %, 6 to
        # ~98 %; more iterations also amplify float32 rounding (multi-process runs drift apart)
        halves_out = [
            _refine(refine_in_box, i, t, m, refine, max_shell) for i, t, m in zip(ins, tiny, pre)
        ]
        timings["refine"] = time.perf_counter() - t0
        return halves_out[0], halves_out[1], full
    maps = [
        dr.wiener_reconstruct(i, r, max_shell=max_shell)
        for i, r in zip((ins[0], ins[1], full_ins), regs)
    ]
    timings["divide"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # every map, half maps included, gets the same refinement (the plain division's are low)
    maps = [
        _refine(refine_in_box, i, r, m, refine, max_shell)
        for i, r, m in zip((ins[0], ins[1], full_ins), regs, maps)
    ]
    timings["refine"] = time.perf_counter() - t0
    return maps[0], maps[1], maps[2]


def _refine(refine_in_box, insertion, reg, volume, iterations, max_shell):
    if iterations <= 0:
        return volume
    out = refine_in_box(insertion, reg, volume, iterations=iterations)
    if max_shell is not None:
        from cryograd.validation import apply_shell_weights

        w = (torch.arange(volume.shape[-1] // 2 + 1) <= max_shell).double()
        out = apply_shell_weights(out, w).to(volume.dtype)
    return out


def _default_lam(insertion, snr, lam) -> float:
    from cryograd.solvers.direct import default_regularizer

    d, p = insertion.box_size, insertion.padded
    if lam is not None:
        return float(lam)
    rho = (d / p) ** 3 / float(snr) if snr is not None else 10.0 * default_regularizer(insertion)
    return rho * p**3 / d**2


def _run_cg(
    particles,
    halves,
    projector,
    pad,
    bs,
    snr,
    lam,
    max_shell,
    tol,
    max_iter,
    progress,
    timings,
    history,
    *,
    device,
    dtype,
    use_ctf,
    symmetry,
    comm,
):
    from cryograd.solvers import cg
    from cryograd.solvers import direct as dr

    common = dict(device=device, dtype=dtype, use_ctf=use_ctf, symmetry=symmetry, comm=comm)
    maps = []
    t0 = time.perf_counter()
    if projector == "fourier":
        ins = [
            dr.insert_particles(
                particles,
                h,
                pad=pad,
                batch_size=bs,
                max_shell=max_shell,
                progress=progress,
                desc=f"insert half {k}",
                **common,
            )
            for k, h in enumerate(halves, start=1)
        ]
        timings["insert"] = time.perf_counter() - t0
        lam_used = _default_lam(ins[0] + ins[1], snr, lam)
        for name, i in (("half1", ins[0]), ("half2", ins[1]), ("full", ins[0] + ins[1])):
            op = cg.ToeplitzNormalOperator(i.weights, i.box_size, lam_used)
            res = cg.conjugate_gradient(
                op,
                cg.normal_rhs_from_insertion(i),
                tol=tol,
                max_iter=max_iter,
                progress=False,
                preconditioner=op.preconditioner,
            )
            history[name] = {
                "iterations": res.iterations,
                "converged": res.converged,
                "relative_residual": res.residuals[-1],
            }
            maps.append(res.x)
    else:
        probe = dr.insert_particles(particles, halves[0][:256], pad=pad, progress=False, **common)
        lam_used = (
            _default_lam(probe, snr, lam)
            * (len(halves[0]) + len(halves[1]))
            / max(1, min(256, len(halves[0])))
        )
        if lam is not None:
            lam_used = float(lam)
        for name, sel in (
            ("half1", halves[0]),
            ("half2", halves[1]),
            ("full", np.concatenate(halves)),
        ):
            res = cg.solve_cg(
                particles,
                sel,
                lam=lam_used,
                projector=projector,
                pad=pad,
                batch_size=bs,
                tol=tol,
                max_iter=max_iter,
                progress=progress,
                **common,
            )
            history[name] = {
                "iterations": res.iterations,
                "converged": res.converged,
                "relative_residual": res.residuals[-1],
            }
            maps.append(res.x)
    history["lam"] = lam_used
    timings["cg"] = time.perf_counter() - t0
    if max_shell is not None:
        from cryograd.validation import apply_shell_weights

        w = (torch.arange(maps[0].shape[-1] // 2 + 1) <= max_shell).double()
        maps = [apply_shell_weights(m, w) for m in maps]
    logger.info(
        "CG iterations: half1 %d, half2 %d, full %d",
        history["half1"]["iterations"],
        history["half2"]["iterations"],
        history["full"]["iterations"],
    )
    return maps[0], maps[1], maps[2]


def _run_gradient(
    particles,
    halves,
    *,
    method,
    projector,
    pad,
    batch_size,
    snr,
    lam,
    max_shell,
    epochs,
    lr,
    loss,
    penalty,
    sorted_l1_sequence,
    sorted_l1_q,
    huber_delta,
    val_fraction,
    patience,
    init,
    lr_schedule,
    seed,
    checkpoint_dir,
    resume,
    progress,
    timings,
    refine=3,
    history,
    device,
    dtype,
    use_ctf,
    symmetry,
    comm,
):
    from cryograd.forward import ForwardModel
    from cryograd.solvers import direct as dr
    from cryograd.solvers.gradient import split_validation, train
    from cryograd.solvers.losses import HUBER_K, make_loss
    from cryograd.solvers.penalties import make_penalty

    if init not in ("direct", "zero"):
        raise CryogradError(f"--init must be direct or zero, got {init!r}")
    try:
        loss_fn = make_loss(
            loss,
            huber_delta=1.0 if huber_delta is None else huber_delta,
            sequence=sorted_l1_sequence,
            q=sorted_l1_q,
        )
        pen = make_penalty(penalty, lam or 0.0, sequence=sorted_l1_sequence, q=sorted_l1_q)
    except ValueError as exc:
        raise CryogradError(str(exc)) from None
    d = int(particles.box_size)
    model = ForwardModel(d, particles.pixel_size_angstrom, projector, pad)
    maps = []
    lr_used = lr
    t0 = time.perf_counter()
    direct_kw = dict(
        pad=pad,
        max_shell=max_shell,
        device=device,
        dtype=dtype,
        use_ctf=use_ctf,
        symmetry=symmetry,
        comm=comm,
        refine=refine,
    )
    for k, half in enumerate(halves, start=1):
        tag = f"half{k}"
        init_vol = None
        if init == "direct":
            # the start is made from the training particles only: one made from all of the
            # half has already fitted the validation particles (its validation loss is
            # optimistically low and every step looks like a loss)
            train_idx, _ = split_validation(half, val_fraction, seed + k)
            start = _direct_start(particles, train_idx, snr, progress, **direct_kw)
            init_vol = _memo_start(train_idx, start, particles, snr, direct_kw)
        if lr_used is None:
            scale_map = start if init == "direct" else None
            if scale_map is None and method == "adam":
                scale_map = dr.reconstruct_direct(
                    particles,
                    half,
                    snr=snr,
                    pad=pad,
                    max_shell=max_shell,
                    progress=False,
                    device=device,
                    dtype=dtype,
                    use_ctf=use_ctf,
                    symmetry=symmetry,
                    comm=comm,
                )
            lr_used = _default_lr(
                method, scale_map, init, particles, half, model, use_ctf, device, dtype
            )
        if loss == "huber" and huber_delta is None:
            train_idx, _ = split_validation(half, val_fraction, seed + k)
            sigma = _residual_sigma(
                particles,
                train_idx,
                model,
                start if init == "direct" else None,
                use_ctf,
                symmetry,
                device,
                dtype,
            )
            loss_fn = make_loss("huber", huber_delta=HUBER_K * sigma)
            history[f"huber_delta_{tag}"] = HUBER_K * sigma
            history[f"noise_sigma_{tag}"] = sigma
            logger.info(
                "%s: Huber δ = %.4g (1.345 · robust σ̂ %.4g of the start's residuals)",
                tag,
                HUBER_K * sigma,
                sigma,
            )
        ckpt = None
        if checkpoint_dir is not None:
            ckpt = Path(checkpoint_dir) / f"checkpoint_{tag}.pt"
        res = train(
            particles,
            half,
            model=model,
            loss_fn=loss_fn,
            penalty=pen,
            method=method,
            epochs=epochs,
            lr=lr_used,
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed + k,
            patience=patience,
            init_volume=init_vol,
            use_ctf=use_ctf,
            symmetry=symmetry,
            device=device,
            dtype=dtype,
            comm=comm,
            progress=progress,
            checkpoint_path=ckpt,
            resume=resume,
            tag=tag,
            lr_schedule=lr_schedule,
        )
        history[tag] = {
            "train_loss": res.train_loss,
            "val_loss": res.val_loss,
            "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run,
            "stopped_early": res.stopped_early,
        }
        maps.append(res.volume)
    timings["train"] = time.perf_counter() - t0
    full = 0.5 * (maps[0] + maps[1])
    return maps[0], maps[1], full, lr_used


def _direct_start(
    particles,
    indices,
    snr,
    progress,
    *,
    pad,
    max_shell,
    device,
    dtype,
    use_ctf,
    symmetry,
    comm,
    refine,
):
    """Starting map of adam/sgd: the direct reconstruction of ``indices`` refined as the
    ``direct`` method refines its maps (constant Wiener term: ``snr`` as ``direct`` reads it, or
    the small default term)."""
    from cryograd.solvers import direct as dr

    ins = dr.insert_particles(
        particles,
        indices,
        pad=pad,
        device=device,
        dtype=dtype,
        use_ctf=use_ctf,
        symmetry=symmetry,
        max_shell=max_shell,
        comm=comm,
        progress=progress,
        desc="start map",
    )
    d, p = ins.box_size, ins.padded
    reg = (d / p) ** 3 / float(snr) if snr is not None else dr.default_regularizer(ins)
    vol = dr.wiener_reconstruct(ins, reg, max_shell=max_shell)
    if refine > 0:
        from cryograd.solvers.cg import refine_in_box

        vol = _refine(refine_in_box, ins, reg, vol, refine, max_shell)
    return vol


def _memo_start(train_idx, start, particles, snr, direct_kw):
    """``init_volume`` for :func:`train`: a function of the training indices that returns the
    start already made for exactly those particles (and makes it for any others)."""
    made = np.asarray(train_idx).copy()

    def init_volume(indices):
        if np.array_equal(np.asarray(indices), made):
            return start
        return _direct_start(particles, indices, snr, False, **direct_kw)

    return init_volume


def _residual_sigma(particles, indices, model, start, use_ctf, symmetry, device, dtype) -> float:
    """Robust noise level ``σ̂ = 1.4826 · MAD`` of the starting map's residuals ``A x₀ − b`` over
    (up to) the first 256 training particles (of the images themselves from a zero start)."""
    from cryograd.solvers.batches import load_batch
    from cryograd.solvers.losses import robust_sigma

    batch = load_batch(
        particles, np.asarray(indices)[:256], device=device, dtype=dtype, use_ctf=use_ctf
    )
    if start is None:
        return robust_sigma(batch.images)
    with torch.no_grad():  # the start is symmetric already: the particles' own poses suffice
        pred = model.project(
            start.to(device=device, dtype=dtype),
            batch.rotations,
            batch.shifts_px,
            batch.model_filter(),
        )
        return robust_sigma(pred - batch.images)


def _default_lr(method, scale_map, init, particles, half, model, use_ctf, device, dtype) -> float:
    """Adam: a step on the map's scale (``0.1 ·`` the direct map's standard deviation from zero,
    ``0.02 ·`` when refining the direct map). SGD: ``1/L`` of the first batch's ``(2/B) AᵀA``."""
    from cryograd.solvers.batches import load_batch

    batch = load_batch(particles, half[:64], device=device, dtype=dtype, use_ctf=use_ctf)
    if method == "adam":
        std = float(scale_map.std()) if scale_map is not None else 0.0
        if std > 0:
            return (0.02 if init == "direct" else 0.1) * std
        rms = float(batch.images.square().mean().sqrt())
        return 0.05 * rms / model.box_size
    # SGD: step 1/L with L the largest eigenvalue of the batch's (2/B) AᵀA (power iteration)
    v = torch.randn(
        (model.box_size,) * 3,
        device=device,
        dtype=dtype,
        generator=torch.Generator(device=device).manual_seed(0),
    )
    filt = batch.model_filter()
    norm = 1.0
    for _ in range(8):
        v = v / v.norm()
        w = model.backproject(
            model.project(v, batch.rotations, batch.shifts_px, filt),
            batch.rotations,
            batch.shifts_px,
            filt,
        ) * (2.0 / len(batch))
        norm = float(w.norm())
        v = w
    return 1.0 / max(norm, 1e-12)


def limit_fsc_result(result, max_shell: int, maxres_angstrom: float, box: int, pixel_size: float):
    """The FSC of maps limited to ``max_shell`` (``--maxres``): the curves are 0 beyond it (those
    frequencies were left out, whatever leaks there through gridding or masking carries no
    information), and the resolutions are no better than ``maxres_angstrom``, the best the run
    could show."""
    import dataclasses

    from cryograd.validation import resolution_at

    def cut(curve):
        if curve is None:
            return None
        out = np.array(curve, dtype=np.float64, copy=True)
        out[max_shell + 1 :] = 0.0
        return out

    fields = {
        k: cut(getattr(result, k))
        for k in ("fsc_unmasked", "fsc_masked", "fsc_corrected", "fsc_randomized_masked")
    }
    final = (
        fields["fsc_corrected"] if fields["fsc_corrected"] is not None else (fields["fsc_unmasked"])
    )
    r143 = max(resolution_at(final, 0.143, box, pixel_size), maxres_angstrom)
    r05 = max(resolution_at(final, 0.5, box, pixel_size), maxres_angstrom)
    extra = dict(result.extra, maxres_angstrom=maxres_angstrom, max_shell=int(max_shell))
    return dataclasses.replace(
        result, **fields, resolution_143_angstrom=r143, resolution_05_angstrom=r05, extra=extra
    )


def _validate(
    h1,
    h2,
    full,
    px,
    mask,
    seed,
    method,
    n,
    timings,
    history,
    params,
    *,
    maxres: float | None = None,
    max_shell: int | None = None,
) -> Result:
    from cryograd.validation import (
        apply_shell_weights,
        compute_fsc_result,
        fsc_weight,
        soft_mask_from_map,
    )

    t0 = time.perf_counter()
    h1 = h1.detach().to("cpu", torch.float64)
    h2 = h2.detach().to("cpu", torch.float64)
    full = full.detach().to("cpu", torch.float64)
    if mask is None:
        try:
            mask = soft_mask_from_map(full)
        except ValueError:
            mask = None
    result = compute_fsc_result(h1, h2, px, mask=mask, seed=seed)
    if max_shell is not None:
        result = limit_fsc_result(result, max_shell, float(maxres), h1.shape[-1], px)
    weighted = apply_shell_weights(full, fsc_weight(result.fsc_final))
    timings["fsc"] = time.perf_counter() - t0
    return Result(
        map=weighted.float(),
        full_map=full.float(),
        half_maps=(h1.float(), h2.float()),
        fsc=result,
        resolution_angstrom=float(result.resolution_143_angstrom),
        pixel_size_angstrom=px,
        method=method,
        n_particles=n,
        mask=None if mask is None else mask.float(),
        history=history,
        timings=timings,
        parameters=params,
    )
