"""``cryograd reconstruct PARTICLES -o OUTDIR``: a map with half maps and FSC from posed particles.

Argument parsing, checks, logging and output around :func:`cryograd.reconstruct.reconstruct`.
``--nproc`` and ``--timeout`` are read by the distributed launcher (:mod:`cryograd.distributed`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from cryograd.errors import CryogradError

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("map.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "fsc.png", "loss.png", "run.json",
                "reconstruct.log")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reconstruct`` subcommand."""
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct a map (with half maps and FSC) from particles with poses",
        description="Reconstruct a 3D map from particles with poses and CTFs: gold-standard half "
        "maps, FSC (unmasked and masked, phase-randomisation corrected), resolution at 0.143, "
        "and the FSC-weighted full map.",
    )
    p.add_argument("particles", type=Path, metavar="PARTICLES",
                   help="RELION .star or cryoSPARC .cs")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--method", choices=("direct", "cg", "adam", "sgd"), default="direct")
    p.add_argument("--projector", choices=("fourier", "real"), default="fourier")
    p.add_argument("--pad", type=float, default=2.0, help="padding factor of the Fourier grid")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="particles per batch")
    p.add_argument("--first", type=int, default=None, metavar="N", help="use the first N particles")
    p.add_argument("--class", dest="class_number", type=int, default=None, metavar="N",
                   help="use the particles of rlnClassNumber N")
    p.add_argument("--sym", default="C1", help="point group: C1, Cn, Dn, T, O, I")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--maxres", type=float, default=None, metavar="Å",
                   help="leave out frequencies beyond this resolution")
    p.add_argument("--snr", type=float, default=None,
                   help="constant Wiener SNR (default: RELION's tau2 from the half-map FSC)")
    p.add_argument("--lam", type=float, default=None,
                   help="regulariser λ of cg, or the penalty weight of adam/sgd")
    p.add_argument("--refine", type=int, default=3,
                   help="direct: CG iterations on the full map after the division (0: none)")
    p.add_argument("--mask", type=Path, default=None, help="mask for the masked FSC (MRC)")
    p.add_argument("--no-ctf", action="store_true", help="reconstruct without CTF correction")
    p.add_argument("--datadir", type=Path, default=None, help="folder of the image stacks")
    p.add_argument("--angpix", type=float, default=None,
                   help="pixel size in Å (overrides the file)")
    p.add_argument("--double", action="store_true", help="compute in float64")
    g = p.add_argument_group("cg")
    g.add_argument("--tol", type=float, default=1e-5, help="relative residual tolerance")
    g.add_argument("--max-iter", type=int, default=200)
    g = p.add_argument_group("adam / sgd")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: automatic)")
    g.add_argument("--loss", choices=("l2", "l1", "huber", "sorted-l1"), default="l2")
    g.add_argument("--penalty", choices=("none", "l2", "l1", "sorted-l1", "tv"), default="none")
    g.add_argument("--sorted-l1-seq", choices=("bh", "linear", "equal"), default="bh",
                   help="λ sequence of the sorted-l1 loss/penalty")
    g.add_argument("--sorted-l1-q", type=float, default=0.1, help="q of the BH sequence")
    g.add_argument("--huber-delta", type=float, default=1.0)
    g.add_argument("--val-fraction", type=float, default=0.05, help="held-out fraction, (0, 0.5)")
    g.add_argument("--patience", type=int, default=3, help="epochs without improvement to stop")
    g.add_argument("--init", choices=("direct", "zero"), default="direct")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    g = p.add_argument_group("runs")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    g.add_argument("--force", action="store_true", help="overwrite a previous run in OUTDIR")
    g.add_argument("--nproc", type=int, default=1, help="processes to run (distributed)")
    g.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a process waits for the others before failing")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def check_outdir(out: Path, *, force: bool, resume: bool) -> None:
    """Refuse a folder holding a previous run unless ``--force`` or ``--resume``."""
    if out.exists() and not out.is_dir():
        raise CryogradError(f"{out}: exists and is not a folder")
    if out.is_dir():
        previous = [f for f in (*OUTPUT_FILES, "checkpoint_half1.pt") if (out / f).exists()]
        if previous and not (force or resume):
            raise CryogradError(
                f"{out}: holds a previous run ({', '.join(previous)}); use --force to overwrite "
                "it or --resume to continue it"
            )
        if force and not resume:
            for name in previous:
                (out / name).unlink()
            for ck in out.glob("checkpoint_*.pt"):
                ck.unlink()


def run(args: argparse.Namespace) -> int:
    """Run ``cryograd reconstruct``; returns the exit status."""
    from cryograd.distributed import single_process
    from cryograd.particles import read_particles
    from cryograd.reconstruct import reconstruct

    if not 0.0 < args.val_fraction < 0.5:
        raise CryogradError(f"--val-fraction must be in (0, 0.5), got {args.val_fraction}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CryogradError(f"--batch-size must be at least 1, got {args.batch_size}")
    comm = getattr(args, "comm", None) or single_process()
    out: Path = args.out
    if comm.is_main:
        check_outdir(out, force=args.force, resume=args.resume)
        out.mkdir(parents=True, exist_ok=True)
    handler = None
    if comm.is_main:
        handler = logging.FileHandler(out / "reconstruct.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    try:
        t0 = time.perf_counter()
        particles = read_particles(args.particles, datadir=args.datadir, angpix=args.angpix)
        if args.mask is not None and not args.mask.exists():
            raise CryogradError(f"{args.mask}: mask file not found")
        result = reconstruct(
            particles, args.method, projector=args.projector, pad=args.pad, device=args.device,
            dtype=torch.float64 if args.double else torch.float32, batch_size=args.batch_size,
            first=args.first, class_number=args.class_number, sym=args.sym, seed=args.seed,
            maxres=args.maxres, snr=args.snr, lam=args.lam, use_ctf=not args.no_ctf,
            mask=args.mask, refine=args.refine, cg_tol=args.tol, cg_max_iter=args.max_iter,
            epochs=args.epochs,
            lr=args.lr, loss=args.loss, penalty=args.penalty,
            sorted_l1_sequence=args.sorted_l1_seq, sorted_l1_q=args.sorted_l1_q,
            huber_delta=args.huber_delta, val_fraction=args.val_fraction,
            patience=args.patience, init=args.init, lr_schedule=args.lr_schedule,
            checkpoint_dir=out, resume=args.resume,
            comm=comm, progress=not args.no_progress,
        )
        if comm.is_main:
            result.save(out, extra={"command": " ".join(sys.argv), "particles_file":
                                    str(args.particles), "wall_time_s": time.perf_counter() - t0})
            res = result.resolution_angstrom
            print(
                f"cryograd reconstruct: {result.method}, {result.n_particles} particles, "
                f"resolution {res:.2f} Å (FSC 0.143), {time.perf_counter() - t0:.1f} s -> "
                f"{out / 'map.mrc'}"
            )
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    return 0
