"""``cryograd reconstruct PARTICLES -o OUTDIR``: a map with half maps and FSC from posed particles.

Argument parsing, logging and output around :func:`cryograd.reconstruction.reconstruct`. The flags
map onto the method's config (:func:`method_options`), which validates them; errors from the
library name parameters, and :func:`flag_message` turns those names into the flags.
Distributed runs (:mod:`cryograd.distributed`): ``--nproc K`` starts K local processes; under
``torchrun`` or ``srun`` each launched process joins the job. Rank 0 alone checks the output folder,
writes the outputs (atomically) and shows progress; the other ranks log to ``OUTDIR/rank{R}.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryograd.ctf import CtfSwitches
from cryograd.distributed import (
    init_communicator,
    run_distributed,
    setup_rank_logging,
    spawn,
    spawn_needed,
)
from cryograd.errors import CryogradError
from cryograd.io.mrc import read_map
from cryograd.io.outdir import (
    commit_folder,
    discard,
    folder_lock,
    in_error,
    lock_holder,
    recover_folder,
    staging_folder,
)
from cryograd.optics.ewald import EwaldSettings
from cryograd.particles import read_particles
from cryograd.projectors.registry import PROJECTORS
from cryograd.reconstruction.fingerprint import (
    FINGERPRINT_FILE,
    check_fingerprint,
    run_fingerprint,
)
from cryograd.reconstruction.masks import load_mask
from cryograd.reconstruction.options import method_config
from cryograd.reconstruction.result import (
    CHECKPOINT_PATTERN,
    LOG_FILE,
    OUTPUT_FILES,
    checkpoint_name,
    write_json_atomic,
)
from cryograd.reconstruction.robust import RobustConfig
from cryograd.reconstruction.robust_rules import DEFAULT_RULE, ROBUST_RULES
from cryograd.reconstruction.run import reconstruct
from cryograd.reconstruction.selection import select_particles
from cryograd.solvers import LOSSES, PENALTIES, SOLVERS
from cryograd.solvers.checkpointing import checkpointing
from cryograd.solvers.config import (
    INITS,
    LR_SCHEDULES,
    SolverConfig,
    check_at_least,
    check_positive,
)
from cryograd.solvers.context import RunContext
from cryograd.solvers.ewald import PREMULTIPLIED_MESSAGE as EWALD_PREMULTIPLIED
from cryograd.solvers.losses import LAMBDA_KINDS
from cryograd.symmetry import group_order

logger = logging.getLogger(__name__)

OUTPUT_NAMES = tuple(OUTPUT_FILES.values())
"""Every file a run writes into OUTDIR (:data:`cryograd.reconstruction.result.OUTPUT_FILES`)."""

CHECKPOINTS = (checkpoint_name("half1"), checkpoint_name("half2"))

PARAMETER_FLAGS: dict[str, str] = {
    "method": "--method",
    "optimizer": "--method",
    "projector": "--projector",
    "pad": "--pad",
    "device": "--device",
    "batch_size": "--batch-size",
    "first": "--first",
    "class_number": "--class",
    "sym": "--sym",
    "seed": "--seed",
    "maxres": "--maxres",
    "snr": "--snr",
    "lam": "--lam",
    "refine": "--refine",
    "tol": "--tol",
    "max_iter": "--max-iter",
    "epochs": "--epochs",
    "lr": "--lr",
    "loss": "--loss",
    "penalty": "--penalty",
    "sorted_l1_sequence": "--sorted-l1-seq",
    "sorted_l1_q": "--sorted-l1-q",
    "huber_delta": "--huber-delta",
    "val_fraction": "--val-fraction",
    "patience": "--patience",
    "init": "--init",
    "lr_schedule": "--lr-schedule",
    "skip_bad_particles": "--skip-bad-particles",
}
"""Library parameter -> the flag that sets it."""

# the config field each option's value comes from, for the flags whose dest differs
_DESTS = {"sorted_l1_sequence": "sorted_l1_seq"}


def flag_message(message: str) -> str:
    """A library error with its parameter names as flags: ``val_fraction must ...`` ->
    ``--val-fraction must ...``, ``pad=1`` -> ``--pad 1``, ``use_ctf=False`` -> ``--no-ctf``.

    A name is replaced where it is followed by ``=``, ``must`` or ``given``; a name with an
    underscore (never an English word) wherever it stands."""
    message = message.replace("use_ctf=False", "--no-ctf")
    for name, flag in PARAMETER_FLAGS.items():
        message = re.sub(rf"(?<![\w-]){name}=('?)([^\s,;:']*)\1", rf"{flag} \2", message)
        after = r"\b" if "_" in name else r"(?= must\b| given\b)"
        message = re.sub(rf"(?<![\w-]){name}{after}", flag, message)
    return message


@contextlib.contextmanager
def _flag_errors() -> Iterator[None]:
    """Re-raise a :class:`CryogradError` with :func:`flag_message` applied."""
    try:
        yield
    except CryogradError as exc:
        text = flag_message(str(exc))
        if text == str(exc):
            raise
        raise CryogradError(text) from exc


def method_options(args: argparse.Namespace) -> dict:
    """The flags as config options (every method's; the method's config takes its own)."""
    options = {}
    for cls in dict.fromkeys(solver.config_type for solver in SOLVERS.values()):
        for name in cls.field_names():
            dest = _DESTS.get(name, name)
            if hasattr(args, dest):
                options[name] = getattr(args, dest)
    options["checkpoint_dir"] = args.out
    options.pop("optimizer", None)
    return options


def method_config_of(args: argparse.Namespace) -> SolverConfig:
    """The validated config of ``--method`` from the flags."""
    return method_config(args.method, None, method_options(args))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reconstruct`` subcommand."""
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct a map (with half maps and FSC) from particles with poses",
        description="Reconstruct a 3D map from particles with poses and CTFs: gold-standard half "
        "maps, FSC (unmasked and masked, phase-randomisation corrected), resolution at 0.143, "
        "and the FSC-weighted full map.",
    )
    p.add_argument(
        "particles", type=Path, metavar="PARTICLES", help="RELION .star or cryoSPARC .cs"
    )
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--method", choices=tuple(SOLVERS), default="direct")
    p.add_argument("--projector", choices=tuple(PROJECTORS), default="fourier")
    p.add_argument("--pad", type=float, default=2.0, help="padding factor of the Fourier grid")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="particles per batch")
    p.add_argument("--first", type=int, default=None, metavar="N", help="use the first N particles")
    p.add_argument(
        "--class",
        dest="class_number",
        type=int,
        default=None,
        metavar="N",
        help="use the particles of rlnClassNumber N",
    )
    p.add_argument("--sym", default="C1", help="point group: C1, Cn, Dn, T, O, I")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--maxres",
        type=float,
        default=None,
        metavar="Å",
        help="leave out frequencies beyond this resolution",
    )
    p.add_argument(
        "--snr",
        type=float,
        default=None,
        help="constant signal-to-noise power ratio per Fourier voxel of the box, giving the "
        "Wiener term (D/P)^3/SNR in the units of the CTF^2 weights (default: RELION's 1/tau2 "
        "per shell from the half-map FSC)",
    )
    p.add_argument(
        "--lam",
        type=float,
        default=None,
        help="regulariser λ of cg, or the penalty weight of adam/sgd",
    )
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        help="direct: CG iterations confined to the inscribed sphere after the division "
        "(default 0: none; they zero whatever lies outside that sphere)",
    )
    _add_map_options(p)
    _add_input_options(p)
    g = p.add_argument_group("cg")
    g.add_argument("--tol", type=float, default=1e-5, help="relative residual tolerance")
    g.add_argument("--max-iter", type=int, default=200)
    g = p.add_argument_group("adam / sgd")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: automatic)")
    g.add_argument("--loss", choices=tuple(LOSSES), default="l2")
    g.add_argument("--penalty", choices=tuple(PENALTIES), default="none")
    g.add_argument(
        "--sorted-l1-seq",
        choices=LAMBDA_KINDS,
        default="bh",
        help="λ sequence of the sorted-l1 loss/penalty",
    )
    g.add_argument("--sorted-l1-q", type=float, default=0.1, help="q of the BH sequence")
    g.add_argument(
        "--huber-delta",
        type=float,
        default=None,
        help="Huber threshold in image intensity units (default: 1.345 × the robust noise "
        "level of the starting map's residuals)",
    )
    g.add_argument("--val-fraction", type=float, default=0.05, help="held-out fraction, (0, 0.5)")
    g.add_argument("--patience", type=int, default=3, help="epochs without improvement to stop")
    g.add_argument("--init", choices=INITS, default="direct")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant")
    _add_robust_flags(p)
    g = p.add_argument_group("runs")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    g.add_argument("--force", action="store_true", help="overwrite a previous run in OUTDIR")
    g.add_argument(
        "--postprocess",
        action="store_true",
        help="run cryograd postprocess into OUTDIR/postprocess",
    )
    g.add_argument("--nproc", type=int, default=1, help="processes to run (distributed)")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads per process (default: the cores this process may use, shared "
        "among the --nproc processes); sets torch.set_num_threads",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a process waits for the others before failing",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _add_input_options(p: argparse.ArgumentParser) -> None:
    """The flags of how the particles are read and computed on."""
    p.add_argument("--no-ctf", action="store_true", help="reconstruct without CTF correction")
    p.add_argument("--datadir", type=Path, default=None, help="folder of the image stacks")
    p.add_argument(
        "--angpix", type=float, default=None, help="pixel size in Å (overrides the file)"
    )
    p.add_argument("--double", action="store_true", help="compute in float64")
    p.add_argument(
        "--ctf-intact-first-peak",
        action="store_true",
        help="CTF 1 up to its first peak (relion_reconstruct --ctf_intact_first_peak)",
    )
    p.add_argument(
        "--ctf-phase-flipped",
        action="store_true",
        help="the images are phase-flipped: correct with |CTF| (relion_reconstruct "
        "--ctf_phase_flipped)",
    )
    p.add_argument(
        "--only-flip-phases",
        action="store_true",
        help="correct with sign(CTF) only (relion_reconstruct --only_flip_phases)",
    )
    _add_ewald_options(p)
    p.add_argument(
        "--skip-bad-particles",
        action="store_true",
        help="leave out particles whose image has NaN/inf pixels, is constant or has a corrupt "
        "pixel (default: refuse the set, naming the first)",
    )


def _add_ewald_options(p: argparse.ArgumentParser) -> None:
    """``relion_reconstruct --ewald`` and its options (direct method only)."""
    p.add_argument(
        "--ewald",
        action="store_true",
        help="correct for the Ewald sphere's curvature (relion_reconstruct --ewald; direct only)",
    )
    p.add_argument(
        "--mask-diameter",
        type=float,
        default=None,
        metavar="Å",
        help="particle diameter for --ewald (relion_reconstruct --mask_diameter)",
    )
    p.add_argument(
        "--sectors", type=int, default=2, help="angular sectors of --ewald's P/Q split (2)"
    )
    p.add_argument(
        "--reverse-curvature",
        action="store_true",
        help="swap the curvature of --ewald's P and Q images (relion_reconstruct "
        "--reverse_curvature)",
    )


def ewald_settings_of(args: argparse.Namespace) -> EwaldSettings | None:
    """The ``--ewald`` settings, checked (None without ``--ewald``)."""
    if not getattr(args, "ewald", False):
        for flag, value in (("--mask-diameter", args.mask_diameter),):
            if value is not None:
                raise CryogradError(f"{flag} needs --ewald")
        return None
    if args.method != "direct":
        raise CryogradError(f"--ewald needs --method direct (got --method {args.method})")
    if args.no_ctf:
        raise CryogradError("--ewald needs CTF correction: drop --no-ctf")
    diameter = args.mask_diameter
    if diameter is None or not (math.isfinite(diameter) and diameter > 0):
        raise CryogradError("--ewald needs --mask-diameter Å (the particle's diameter, > 0)")
    if args.sectors < 2:
        raise CryogradError(f"--sectors must be at least 2, got {args.sectors}")
    return EwaldSettings(diameter, int(args.sectors), bool(args.reverse_curvature))


def _add_map_options(p: argparse.ArgumentParser) -> None:
    """The flags of what ``map.mrc`` is and of the mask of the masked FSC."""
    p.add_argument(
        "--local-filter",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="filter map.mrc by the half maps' local agreement (default); --no-local-filter: "
        "the FSC-weighted map",
    )
    p.add_argument("--mask", type=Path, default=None, help="mask for the masked FSC (MRC)")


def _add_robust_flags(p: argparse.ArgumentParser) -> None:
    """The ``--robust`` flags."""
    g = p.add_argument_group("robust (junk-immune)")
    g.add_argument(
        "--robust",
        action="store_true",
        help="weigh every particle by how well its half's map explains it (IRLS); writes "
        "particles_scored.star and robust_weights.png",
    )
    g.add_argument("--robust-rule", choices=tuple(ROBUST_RULES), default=DEFAULT_RULE)
    g.add_argument(
        "--robust-rounds",
        default="auto",
        metavar="N|auto",
        help="IRLS rounds per half (auto: 1, or 2 when the first down-weights over 10%% of it)",
    )
    g.add_argument(
        "--keep-above",
        type=float,
        default=None,
        metavar="W",
        help="with --robust, also write particles_kept.star: the particles weighing more than W",
    )
    g.add_argument(
        "--weight-column",
        default=None,
        metavar="NAME",
        help="fixed per-particle weights in [0, 1] from this STAR column (e.g. rlnCryogradWeight)",
    )


def _is_temporary_of(name: str, outputs: tuple[str, ...]) -> bool:
    """Whether ``name`` is an atomic writer's temporary file for one of ``outputs``."""
    return (
        name.startswith(".")
        and ".tmp" in name
        and any(name.startswith(f".{out}.") for out in outputs)
    )


def check_outdir(out: Path, *, force: bool, resume: bool) -> None:
    """Refuse a folder holding a previous run unless ``--force`` or ``--resume``.

    Temporary files that a stopped run left behind (an atomic write cut short by SIGKILL) are
    removed in every case: they never hold a finished output.
    """
    if out.exists() and not out.is_dir():
        raise CryogradError(f"{out}: exists and is not a folder")
    if out.is_dir():
        checkpoints = tuple(f.name for f in out.glob(CHECKPOINT_PATTERN))
        for stale in out.glob(".*"):
            if stale.is_file() and _is_temporary_of(
                stale.name, (*OUTPUT_NAMES, *checkpoints, *CHECKPOINTS)
            ):
                stale.unlink(missing_ok=True)
        previous = [f for f in (*OUTPUT_NAMES, *checkpoints) if (out / f).exists()]
        if previous and not (force or resume):
            raise CryogradError(
                f"{out}: holds a previous run ({', '.join(previous)}); use --force to overwrite "
                "it or --resume to continue it"
            )
        if force and not resume:
            for name in previous:
                (out / name).unlink()
            for ck in out.glob(CHECKPOINT_PATTERN):
                ck.unlink()
            (out / FINGERPRINT_FILE).unlink(missing_ok=True)
            for log in out.glob("rank*.log"):
                log.unlink()


def _precheck_outdir(out: Path, *, force: bool, resume: bool) -> None:
    """Before starting processes: refuse at once a folder rank 0 would refuse (changes nothing)."""
    if out.exists() and not out.is_dir():
        raise CryogradError(f"{out}: exists and is not a folder")
    holder = lock_holder(out)
    if holder is not None:
        raise CryogradError(
            f"{out}: another cryograd run (pid {holder}) is writing this folder; wait for it to "
            "end or choose another output folder"
        )
    if out.is_dir() and not (force or resume):
        previous = [f for f in (*OUTPUT_NAMES, CHECKPOINTS[0]) if (out / f).exists()]
        if previous:
            raise CryogradError(
                f"{out}: holds a previous run ({', '.join(previous)}); use --force to overwrite "
                "it or --resume to continue it"
            )


def _check_options(args: argparse.Namespace) -> None:
    """Options checked before anything is read or written: every method's config (each validates
    its own, so that an option outside its domain is refused whatever the method), and the
    options of the command itself."""
    method_config_of(args)
    options = method_options(args)
    for name in SOLVERS:
        method_config(name, None, options)
    check_positive("maxres", args.maxres)
    check_positive("--angpix", args.angpix)
    check_at_least("first", args.first, 2)
    check_at_least("--nproc", args.nproc, 1)
    check_at_least("--threads", getattr(args, "threads", None), 1)
    check_positive("--timeout", args.timeout)
    check_positive("tol", args.tol)
    if args.max_iter is not None:
        check_at_least("max_iter", args.max_iter, 1)
    robust_config_of(args)
    ewald_settings_of(args)


def robust_config_of(args: argparse.Namespace) -> RobustConfig | None:
    """The ``--robust`` settings (None without it); refuses ``--keep-above`` outside [0, 1] or
    without ``--robust``."""
    keep = args.keep_above
    if keep is not None and not (math.isfinite(keep) and 0 <= keep <= 1):
        raise CryogradError(f"--keep-above must be in [0, 1], got {keep}")
    if keep is not None and not args.robust:
        raise CryogradError("--keep-above needs --robust")
    if not args.robust:
        return None
    text = str(args.robust_rounds).strip()
    rounds = None if text == "auto" else int(text) if text.isdigit() and int(text) >= 1 else 0
    if rounds == 0:
        raise CryogradError(f"--robust-rounds must be 'auto' or an integer ≥ 1, got {text!r}")
    return RobustConfig(rule=args.robust_rule, rounds=rounds, keep_above=keep)


def weights_of(args: argparse.Namespace, particles) -> np.ndarray | None:
    """The ``--weight-column`` values of ``particles`` (checked: numbers in [0, 1]), or None."""
    name = args.weight_column
    if name is None:
        return None
    extra = particles.extra_columns
    if extra is None or name not in extra.columns:
        raise CryogradError(f"--weight-column {name}: no such column in {args.particles}")
    values = pd.to_numeric(extra[name], errors="coerce").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > 1):
        raise CryogradError(
            f"--weight-column {name}: values must be numbers in [0, 1] ({args.particles})"
        )
    return values


def ctf_switches_of(args: argparse.Namespace) -> CtfSwitches:
    """``relion_reconstruct``'s CTF switches from the flags."""
    return CtfSwitches(
        intact_first_peak=bool(getattr(args, "ctf_intact_first_peak", False)),
        phase_flipped=bool(getattr(args, "ctf_phase_flipped", False)),
        only_flip_phases=bool(getattr(args, "only_flip_phases", False)),
    )


def read_input(args: argparse.Namespace):
    """The particle set of ``args.particles``, with the CTF switches of the flags."""
    particles = read_particles(args.particles, datadir=args.datadir, angpix=args.angpix)
    particles.ctf_switches = ctf_switches_of(args)
    particles.ewald = ewald_settings_of(args)
    if particles.ewald is not None and bool(np.any(particles.ctf_premultiplied)):
        raise CryogradError(f"{args.particles}: {EWALD_PREMULTIPLIED} (--ewald)")
    return particles


def _check_inputs(args: argparse.Namespace, comm=None):
    """Read the particles and check the mask (box, values) before the output folder is touched.

    Returns the :class:`~cryograd.particles.ParticleSet` and the mask array (or None).
    """
    if args.mask is not None and not args.mask.is_file():
        raise CryogradError(f"{args.mask}: mask file not found")
    particles = read_input(args)
    weights_of(args, particles)
    group_order(args.sym)
    select_particles(
        particles, first=args.first, class_number=args.class_number, use_ctf=not args.no_ctf
    )
    mask = None
    if args.mask is not None:
        mask = read_map(args.mask).data
        if particles.box_size is not None:
            try:
                load_mask(mask, int(particles.box_size))
            except CryogradError as exc:  # name the file, not "mask"
                raise CryogradError(str(exc).replace("mask:", f"{args.mask}:", 1)) from None
    return particles, mask


def _remove_if_only_logs(out: Path, created: bool, before: set[str]) -> None:
    """After a failure: when this run added nothing to ``out`` but logs, remove them (and the
    folder itself when this run made it). ``before`` names what ``out`` held at the start."""
    if not out.is_dir():
        return
    new = {e.name for e in out.iterdir()} - before
    removable = (LOG_FILE, FINGERPRINT_FILE)
    if any(not (n in removable or (n.startswith("rank") and n.endswith(".log"))) for n in new):
        return  # an output or a checkpoint was written: keep everything
    for name in new:
        (out / name).unlink(missing_ok=True)
    if created and not any(out.iterdir()):
        out.rmdir()


def run(args: argparse.Namespace) -> int:
    """Run ``cryograd reconstruct``; returns the exit status.

    With ``--nproc K`` (K > 1) and no launcher, this process starts K copies of the command
    (:func:`cryograd.distributed.spawn`) and waits for them. Under ``torchrun``, ``srun`` or such a
    copy, it joins the job (:func:`cryograd.distributed.init_communicator`) and runs its share;
    a failure on any rank stops every rank (:func:`cryograd.distributed.run_distributed`).
    ``args.comm``, when set, is used as given (tests, notebooks).
    """
    with _flag_errors():
        _check_options(args)
    comm = getattr(args, "comm", None)
    if comm is None:
        if spawn_needed(args.nproc):
            _precheck_outdir(args.out, force=args.force, resume=args.resume)
            argv = getattr(args, "argv", None)
            if argv is None:
                argv = sys.argv[1:]
            return spawn(args.nproc, list(argv))
        comm = init_communicator(args.timeout, args.device)
    return run_distributed(_run, comm, args, comm)


def usable_cores() -> int:
    """Cores this process may run on (``len(os.sched_getaffinity(0))``, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_threads(requested: int | None, processes: int = 1) -> int:
    """Threads per process: ``requested``, or the usable cores shared among ``processes``."""
    if requested is not None:
        return max(1, int(requested))
    return max(1, usable_cores() // max(1, int(processes)))


def _run(args: argparse.Namespace, comm) -> int:
    """One rank's part of ``cryograd reconstruct`` (all of it with one process)."""
    with _flag_errors():
        return _run_rank(args, comm)


def _run_rank(args: argparse.Namespace, comm) -> int:
    out: Path = args.out
    with contextlib.ExitStack() as stack:
        particles = mask = None
        if not comm.is_distributed:
            # one process: bad input is found before the output folder is made or cleaned; a
            # distributed job keeps its order (rank 0 logs every rank's failure into the folder)
            particles, mask = _check_inputs(args)
        if comm.is_main:
            stack.enter_context(folder_lock(out))
            recover_folder(out)
            check_outdir(out, force=args.force, resume=args.resume)
        return _run_locked(args, comm, particles, mask)
    raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises


def _fingerprint_options(args: argparse.Namespace) -> dict:
    """The command's settings beside the method's config that change the result."""
    return {
        "method": args.method,
        "first": args.first,
        "class_number": args.class_number,
        "maxres": args.maxres,
        "sym": args.sym,
        "use_ctf": not args.no_ctf,
        "double": args.double,
        "angpix": args.angpix,
        "mask": None if args.mask is None else str(Path(args.mask).resolve()),
        "skip_bad_particles": args.skip_bad_particles,
        "ctf_switches": ctf_switches_of(args).flags(),
        "ewald": None
        if not args.ewald
        else [args.mask_diameter, args.sectors, args.reverse_curvature],
    }


def _check_resume(args: argparse.Namespace, particles, config: SolverConfig) -> None:
    """Write the run's fingerprint (fresh run) or check it against the checkpoint's (resume)."""
    path = args.out / FINGERPRINT_FILE
    current = run_fingerprint(particles, config, _fingerprint_options(args))
    if args.resume and path.exists():
        check_fingerprint(json.loads(path.read_text()), current, args.out)
        return
    if args.resume and any(args.out.glob(CHECKPOINT_PATTERN)):
        logger.warning("%s: checkpoints without a fingerprint: cannot check they match", args.out)
        return
    write_json_atomic(path, current)


def _save(result, out: Path, extra: dict, handler) -> None:
    """Write the outputs into a staging folder beside ``out`` (``run.json`` last) and move it
    into place (:func:`cryograd.io.outdir.commit_folder`); on failure nothing is left."""
    stage = staging_folder(out)
    try:
        result.save(stage, extra=extra)
        if handler is not None:
            handler.flush()
            shutil.copy2(out / LOG_FILE, stage / LOG_FILE)
        commit_folder(stage, out, last=OUTPUT_FILES["run_json"], carry=(LOG_FILE,))
    except OSError as exc:
        discard(stage)
        raise in_error(exc, stage, out) from None
    except BaseException:
        discard(stage)
        raise


def _run_locked(args: argparse.Namespace, comm, particles, mask) -> int:
    out: Path = args.out
    handler = None
    created = not out.exists()
    before = {f.name for f in out.iterdir()} if out.is_dir() else set()
    if comm.is_main:
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    comm.barrier()  # rank 0 has checked and made the output folder
    if not comm.is_main:
        setup_rank_logging(
            out, comm, logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
        )
    if comm.world_size > 1:
        logger.info(
            "rank %d of %d (pid %d) on %s", comm.rank, comm.world_size, os.getpid(), comm.device
        )
    threads = cpu_threads(getattr(args, "threads", None), comm.world_size)
    torch.set_num_threads(threads)
    logger.info("%d CPU thread(s) per process", threads)
    try:
        t0 = time.perf_counter()
        if particles is None:
            particles = read_input(args)
            if args.mask is not None and not args.mask.exists():
                raise CryogradError(f"{args.mask}: mask file not found")
        config = method_config_of(args)
        if comm.is_main:
            _check_resume(args, particles, config)
        context = RunContext.create(
            device=comm.device,
            dtype=torch.float64 if args.double else torch.float32,
            use_ctf=not args.no_ctf,
            sym=args.sym,
            comm=comm,
        ).with_weights(weights_of(args, particles))
        with checkpointing(out, resume=args.resume, is_main=comm.is_main):
            result = reconstruct(
                particles,
                args.method,
                config=config,
                context=context,
                first=args.first,
                class_number=args.class_number,
                maxres=args.maxres,
                mask=args.mask if mask is None else mask,
                progress=not args.no_progress,
                skip_bad_particles=args.skip_bad_particles,
                local_filter=args.local_filter,
                robust=robust_config_of(args),
            )
        if comm.is_main:
            argv = getattr(args, "argv", None)
            command = " ".join(["cryograd", *argv]) if argv is not None else " ".join(sys.argv)
            extra = {
                "command": command,
                "particles_file": str(args.particles),
                "wall_time_s": time.perf_counter() - t0,
                "world_size": comm.world_size,
                "distributed": comm.stats(),
            }
            _save(result, out, extra, handler)
            res = result.resolution_angstrom
            procs = f" on {comm.world_size} processes" if comm.world_size > 1 else ""
            print(
                f"cryograd reconstruct: {result.method}, {result.n_particles} particles{procs}, "
                f"resolution {res:.2f} Å (FSC 0.143), {time.perf_counter() - t0:.1f} s -> "
                f"{out / 'map.mrc'}"
            )
            if getattr(args, "postprocess", False):
                from cryograd.cli.postprocess import postprocess_folder

                postprocess_folder(out, mask=args.mask, progress=not args.no_progress)
    except BaseException:
        if comm.is_distributed:
            handler = None  # keep it: the job's stop is logged there, then this process ends
        else:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
                handler = None
            _remove_if_only_logs(out, created, before)
        raise
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    return 0
