"""``cryograd simulate MAP -n N -o DIR``: a synthetic particle set from a map."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch

from cryograd.errors import CryogradError
from cryograd.io.outdir import (
    commit_folder,
    discard,
    folder_lock,
    in_error,
    recover_folder,
    staging_folder,
)
from cryograd.projectors.registry import PROJECTORS
from cryograd.simulation import simulate
from cryograd.simulation_junk import JUNK_KINDS

logger = logging.getLogger(__name__)


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX in µm, got {text!r}") from None
    return lo, hi


def _numbers(text: str | None, count: int | None, flag: str) -> tuple[float, ...] | None:
    """Comma-separated finite numbers of ``flag`` (exactly ``count`` when given), or None."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CryogradError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if (count is not None and len(values) != count) or not all(map(math.isfinite, values)):
        want = f"{count} " if count is not None else ""
        raise CryogradError(f"{flag}: expected {want}finite numbers, got {text!r}")
    return values


def _add_optics_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "optics (applied as RELION's observation model and written to data_optics)"
    )
    group.add_argument("--beam-tilt", metavar="X,Y", help="beam tilt in mrad")
    group.add_argument(
        "--odd-zernike",
        metavar="C0,C1,...",
        help="rlnOddZernike coefficients (RELION's order and units; 2, 6, 12, ... values)",
    )
    group.add_argument(
        "--even-zernike",
        metavar="C0,C1,...",
        help="rlnEvenZernike coefficients (RELION's order and units; 1, 4, 9, ... values)",
    )
    group.add_argument("--mag-matrix", metavar="M00,M01,M10,M11", help="rlnMagMat00..11")
    group.add_argument(
        "--group-angpix",
        metavar="P1,P2,...",
        help="one optics group per pixel size in Å, particles dealt in pairs (P1 = the map's)",
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate particles from a map (orientations, shifts, CTFs, noise)",
        description=(
            "Project MAP at N orientations uniform on SO(3), with origins uniform in "
            "[-shift-max, shift-max] px, RELION CTFs (300 kV, Cs 2.7 mm, Q0 0.1, random "
            "astigmatism) and white Gaussian noise at SNR = var(signal)/var(noise) over the box. "
            "Writes DIR/particles.mrcs (several stacks when large), DIR/particles.star "
            "(RELION 3.1, rlnRandomSubset) and DIR/ground_truth.mrc."
        ),
    )
    parser.add_argument("map", type=Path, metavar="MAP", help="cubic MRC map")
    parser.add_argument("-n", "--number", type=int, required=True, help="number of particles")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    parser.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio (0.1)")
    parser.add_argument(
        "--defocus",
        type=_range,
        default=(1.0, 2.5),
        metavar="MIN:MAX",
        help="mean defocus range in µm (1.0:2.5)",
    )
    parser.add_argument("--shift-max", type=float, default=3.0, help="maximum origin in px (3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--projector", choices=tuple(PROJECTORS), default="fourier")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (256)")
    parser.add_argument(
        "--stack-size",
        type=int,
        default=None,
        help="images per .mrcs file (default 10000, fewer for large boxes: at most 512 MiB)",
    )
    parser.add_argument("--angpix", type=float, help="pixel size in Å (default: the map's)")
    parser.add_argument(
        "--junk",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of junk particles in [0, 1), marked rlnCryogradJunk in the STAR (0)",
    )
    parser.add_argument(
        "--junk-kind",
        choices=JUNK_KINDS,
        default="mixed",
        help="noise, blob (ice/carbon), other (--junk-map), pose (wrong pose) or mixed",
    )
    parser.add_argument(
        "--junk-map", type=Path, default=None, help="the other molecule's map (--junk-kind other)"
    )
    _add_optics_flags(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.number < 1:
        raise CryogradError(f"-n must be at least 1, got {args.number}")
    if not args.snr > 0:
        raise CryogradError(f"--snr must be positive, got {args.snr}")
    if not args.map.is_file():
        raise CryogradError(f"{args.map}: file not found")
    if args.output.exists() and not args.output.is_dir():
        raise CryogradError(f"{args.output}: exists and is not a folder")
    for name, value in (("--shift-max", args.shift_max), ("--batch-size", args.batch_size)):
        if not value >= (1 if name == "--batch-size" else 0):
            raise CryogradError(f"{name} {value}: out of range")
    lo, hi = args.defocus
    if not 0 < lo <= hi < 20:
        raise CryogradError(f"--defocus {lo}:{hi}: give MIN:MAX in µm with 0 < MIN <= MAX < 20")
    if not (math.isfinite(args.junk) and 0 <= args.junk < 1):
        raise CryogradError(f"--junk must be a fraction in [0, 1), got {args.junk}")
    if args.junk_kind == "other" and args.junk_map is None:
        raise CryogradError("--junk-kind other needs --junk-map MAP (the other molecule)")
    if args.junk_map is not None and not args.junk_map.is_file():
        raise CryogradError(f"--junk-map {args.junk_map}: file not found")
    with folder_lock(args.output):
        recover_folder(args.output)
        stage = staging_folder(args.output)
        try:
            result = _simulate_into(args, stage)
            commit_folder(stage, args.output, last="particles.star")
        except OSError as exc:
            discard(stage)
            raise in_error(exc, stage, args.output) from None
        except BaseException:
            discard(stage)
            raise
    logger.info(
        "wrote %s (%d particles, %d stack(s)), noise sigma %.4g",
        args.output / result.star_path.name,
        len(result.particles),
        len(result.stack_paths),
        result.noise_sigma,
    )
    return 0


def _simulate_into(args: argparse.Namespace, folder: Path):
    """:func:`cryograd.simulation.simulate` with the flags, writing into ``folder``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return simulate(
        args.map,
        args.number,
        pixel_size=args.angpix,
        snr=args.snr,
        defocus_range_um=args.defocus,
        shift_max_px=args.shift_max,
        seed=args.seed,
        projector=args.projector,
        out_dir=folder,
        batch_size=args.batch_size,
        images_per_stack=args.stack_size,
        device=device,
        junk=args.junk,
        junk_kind=args.junk_kind,
        junk_map=args.junk_map,
        beam_tilt_mrad=_numbers(args.beam_tilt, 2, "--beam-tilt"),
        odd_zernike=_numbers(args.odd_zernike, None, "--odd-zernike"),
        even_zernike=_numbers(args.even_zernike, None, "--even-zernike"),
        mag_matrix=_numbers(args.mag_matrix, 4, "--mag-matrix"),
        group_pixel_sizes=_numbers(args.group_angpix, None, "--group-angpix"),
    )
