"""``cryograd postprocess HALF1 HALF2 -o OUTDIR``: masked FSC, sharpening and local resolution."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.io.mrc import read_map
from cryograd.postprocess.locres import LocresConfig
from cryograd.postprocess.masks import create_mask
from cryograd.postprocess.outputs import OUTPUT_NAMES, write_outputs
from cryograd.postprocess.run import PostprocessConfig, postprocess
from cryograd.postprocess.sharpen import read_mtf
from cryograd.reconstruction.masks import load_mask


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "postprocess",
        help="masked FSC, B-factor sharpening and local resolution of two half maps",
        description=(
            "Post-process two half maps as relion_postprocess does: unmasked, masked and "
            "phase-randomised masked FSC and the corrected FSC, resolution at 0.143, MTF "
            "division, FSC weighting, B-factor sharpening (Guinier fit or given; negative "
            "sharpens) and a low-pass at the resolution; optionally local resolution. Writes "
            "postprocess.mrc, postprocess_masked.mrc, mask.mrc, postprocess.json, fsc.csv, "
            "fsc.png, guinier.png and, with --locres, locres.mrc, locres_filtered.mrc and "
            "locres_histogram.png into OUTDIR."
        ),
    )
    p.add_argument("half1", type=Path, metavar="HALF1")
    p.add_argument("half2", type=Path, metavar="HALF2")
    p.add_argument("-o", "--output", dest="out", type=Path, required=True, metavar="OUTDIR")
    p.add_argument("--angpix", type=float, help="pixel size in Å (default: the headers')")
    p.add_argument("--force", action="store_true", help="overwrite outputs already in OUTDIR")
    g = p.add_argument_group("mask")
    g.add_argument("--mask", type=Path, metavar="MASK", help="soft mask, values in [0, 1]")
    g.add_argument(
        "--auto-mask", action="store_true", help="make a mask from the average of the halves"
    )
    g.add_argument("--threshold", type=float, help="--auto-mask: binarisation threshold")
    g.add_argument("--extend", type=float, default=3.0, metavar="PX", help="extension (3 px)")
    g.add_argument("--soft-edge", type=float, default=6.0, metavar="PX", help="edge (6 px)")
    g.add_argument(
        "--lowpass", type=float, default=15.0, metavar="A", help="low-pass before the threshold"
    )
    g = p.add_argument_group("sharpening")
    g.add_argument(
        "--bfactor", default="auto", help="'auto' (Guinier fit) or Å² (negative sharpens)"
    )
    g.add_argument("--autob-lowres", type=float, default=10.0, metavar="A")
    g.add_argument(
        "--autob-highres",
        type=float,
        default=0.0,
        metavar="A",
        help="high-resolution end of the fit (0, RELION's default: as far as the FSC weight "
        "leaves amplitude)",
    )
    g.add_argument(
        "--low-pass",
        type=float,
        default=-1.0,
        metavar="A",
        help="final low-pass: negative (default): at the resolution; 0: none (RELION 3.1's "
        "default); else at A",
    )
    g.add_argument("--mtf", type=Path, metavar="FILE", help="MTF STAR file of the detector")
    g.add_argument("--mtf-angpix", type=float, help="detector pixel size of the MTF (Å)")
    g.add_argument("--skip-fsc-weighting", action="store_true")
    g.add_argument(
        "--force-mask",
        action="store_true",
        help="keep the masked FSC where the unmasked one reaches further (RELION's --force_mask)",
    )
    g = p.add_argument_group("local resolution")
    g.add_argument("--locres", action="store_true", help="also compute local resolution")
    g.add_argument("--locres-sampling", type=float, default=25.0, metavar="A")
    g.add_argument("--locres-maskrad", type=float, default=None, metavar="A")
    g.add_argument("--locres-edgwidth", type=float, default=None, metavar="A")
    g.add_argument("--locres-randomize-at", type=float, default=25.0, metavar="A")
    g.add_argument("--locres-minres", type=float, default=50.0, metavar="A")
    g.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the phase randomisation (RELION's --random_seed; 0 draws RELION's phases)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _load(path: Path, what: str):
    m = read_map(path)
    if m.data.ndim != 3 or len(set(m.data.shape)) != 1:
        raise CryogradError(f"{path}: {what} must be a cubic 3D map, got shape {m.data.shape}")
    return m


def _pixel_size(args, m1, m2) -> float:
    if args.angpix is not None:
        if not args.angpix > 0:
            raise CryogradError(f"--angpix must be positive, got {args.angpix}")
        return float(args.angpix)
    a1, a2 = m1.voxel_size_angstrom, m2.voxel_size_angstrom
    if not (a1 and a1 > 0):
        raise CryogradError(f"{args.half1}: header has no voxel size; give --angpix")
    if a2 and a2 > 0 and abs(a1 - a2) > 1e-3 * a1:
        raise CryogradError(
            f"{args.half2}: pixel size {a2:.4f} Å differs from {args.half1}'s {a1:.4f} Å"
        )
    return float(a1)


def _check_flags(args) -> None:
    if args.mask is not None and args.auto_mask:
        raise CryogradError("give either --mask or --auto-mask, not both")
    if args.auto_mask and args.threshold is None:
        raise CryogradError("--auto-mask needs --threshold")
    if args.soft_edge < 0:
        raise CryogradError(f"--soft-edge must be >= 0, got {args.soft_edge}")
    if args.mtf_angpix is not None and not args.mtf_angpix > 0:
        raise CryogradError(f"--mtf-angpix must be positive, got {args.mtf_angpix}")
    if args.seed < 0:
        raise CryogradError(f"--seed must be >= 0, got {args.seed}")
    if not math.isfinite(args.low_pass):
        raise CryogradError(f"--low-pass must be a number of Å, got {args.low_pass}")
    if not args.autob_lowres > 0:
        raise CryogradError(f"--autob-lowres must be positive, got {args.autob_lowres}")
    for flag in ("locres_sampling", "locres_randomize_at", "locres_minres"):
        if not getattr(args, flag) > 0:
            raise CryogradError(f"--{flag.replace('_', '-')} must be positive")
    for flag in ("locres_maskrad", "locres_edgwidth"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise CryogradError(f"--{flag.replace('_', '-')} must be >= 0")


def _bfactor(text: str) -> float | str:
    if str(text).lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise CryogradError(f"--bfactor must be 'auto' or a number in Å², got {text!r}") from None
    if not math.isfinite(value):
        raise CryogradError(f"--bfactor must be finite, got {text!r}")
    return value


def _check_outdir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CryogradError(f"{out}: exists and is not a folder")
    if out.is_dir() and not force:
        present = [n for n in OUTPUT_NAMES if (out / n).exists()]
        if present:
            raise CryogradError(
                f"{out}: holds a previous post-processing ({', '.join(present[:3])}); "
                "use --force to overwrite"
            )


def _mask(args, avg: torch.Tensor, apix: float):
    if args.mask is not None:
        return load_mask(args.mask, avg.shape[0])
    if not args.auto_mask:
        return None
    try:
        return create_mask(
            avg,
            apix,
            args.threshold,
            extend_px=args.extend,
            soft_edge_px=args.soft_edge,
            lowpass_angstrom=args.lowpass,
        )
    except CryogradError as exc:
        raise CryogradError(f"--threshold {args.threshold:g}: {exc}") from None


def run(args) -> int:
    t0 = time.perf_counter()
    _check_flags(args)
    bfactor = _bfactor(args.bfactor)
    _check_outdir(args.out, args.force)
    m1, m2 = _load(args.half1, "half map"), _load(args.half2, "half map")
    if m1.data.shape != m2.data.shape:
        raise CryogradError(
            f"{args.half2}: box {m2.data.shape} differs from {args.half1}'s box {m1.data.shape}"
        )
    apix = _pixel_size(args, m1, m2)
    mtf = read_mtf(args.mtf) if args.mtf is not None else None
    v1 = torch.from_numpy(m1.data.astype(np.float64))
    v2 = torch.from_numpy(m2.data.astype(np.float64))
    mask = _mask(args, 0.5 * (v1 + v2), apix)
    locres = None
    if args.locres:
        locres = LocresConfig(
            sampling_angstrom=args.locres_sampling,
            maskrad_angstrom=args.locres_maskrad,
            edgewidth_angstrom=args.locres_edgwidth,
            randomize_at_angstrom=args.locres_randomize_at,
            minres_angstrom=args.locres_minres,
            bfactor_a2=0.0 if bfactor == "auto" else float(bfactor),
            mtf=mtf,
            mtf_pixel_size=args.mtf_angpix,
            seed=args.seed,
            device=args.device,
        )
    config = PostprocessConfig(
        bfactor=bfactor,
        fit_low_res_angstrom=args.autob_lowres,
        fit_high_res_angstrom=args.autob_highres,
        mtf=mtf,
        mtf_pixel_size=args.mtf_angpix,
        fsc_weighting=not args.skip_fsc_weighting,
        low_pass_angstrom=args.low_pass,
        seed=args.seed,
        force_mask=args.force_mask,
        locres=locres,
    )
    result = postprocess(v1, v2, apix, mask=mask, config=config, progress=not args.no_progress)
    extra = {
        "half1": str(args.half1),
        "half2": str(args.half2),
        "mask": str(args.mask) if args.mask is not None else ("auto" if args.auto_mask else None),
        "mtf": None if args.mtf is None else str(args.mtf),
        "wall_time_s": time.perf_counter() - t0,
    }
    write_outputs(result, args.out, extra=extra)
    print(
        f"cryograd postprocess: resolution {result.resolution_angstrom:.2f} Å (FSC 0.143, "
        f"{'corrected masked' if mask is not None else 'unmasked'}), B-factor "
        f"{result.bfactor_a2:.1f} Å² -> {args.out / 'postprocess.mrc'}"
    )
    return 0


def postprocess_folder(folder: Path, *, mask: Path | None = None, progress: bool = True) -> int:
    """``cryograd postprocess`` on a reconstruction's ``half1.mrc`` and ``half2.mrc`` into
    ``folder/postprocess`` (used by ``cryograd reconstruct --postprocess``)."""
    parser = argparse.ArgumentParser(prog="cryograd")
    add_parser(parser.add_subparsers())
    argv = ["postprocess", str(folder / "half1.mrc"), str(folder / "half2.mrc")]
    argv += ["-o", str(folder / "postprocess"), "--force"]
    argv += ["--mask", str(mask)] if mask is not None else []
    argv += [] if progress else ["--no-progress"]
    return run(parser.parse_args(argv))
