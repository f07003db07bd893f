"""``cryograd convert``: particle metadata to RELION 3.1 STAR, or to a cryoDRGN pkl pair."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cryograd.errors import CryogradError
from cryograd.io.drgn import read_drgn
from cryograd.io.registry import WRITERS, WriteOptions, read_particles, writer_for

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Convert particle metadata. Inputs: a cryoSPARC .cs file (image paths from its blob/path, relative
to --particles-dir), a RELION STAR file (3.0 to 5.0), or a cryoDRGN pair given as
--poses POSES.pkl --ctf CTF.pkl (box and pixel size from the CTF pkl; then give only OUT).

The output format is chosen by OUT's extension:
  OUT.star   RELION 3.1 STAR (data_optics + data_particles, origins in A). Image stacks
             inside OUT's folder are named relative to it, others by absolute path. STAR
             columns cryograd does not use (micrograph names, coordinates, groups, ...) and
             extra optics fields (beam tilt, aberrations) are passed on.
  OUT.pkl    cryoDRGN pose pkl (rotations = RELION's A, translations = origin_px / box); the CTF
             pkl goes to --ctf-out (default: OUT with '_ctf' before '.pkl').
--to-drgn forces the cryoDRGN output whatever OUT's extension.
Nothing is written when the input has a problem.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert",
        help="convert .cs / STAR / cryoDRGN pkl to RELION 3.1 STAR (or to cryoDRGN pkl)",
        description=DESCRIPTION,
        usage=(
            "cryograd convert [options] IN OUT\n"
            "       cryograd convert [options] --poses POSES.pkl --ctf CTF.pkl OUT"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="input and output files (only OUT with --poses/--ctf)",
    )
    parser.add_argument(
        "--particles-dir",
        "--datadir",
        dest="datadir",
        type=Path,
        help="folder image paths are relative to (cryoSPARC project folder)",
    )
    parser.add_argument("--angpix", type=float, help="pixel size in Å (overrides the input's)")
    parser.add_argument("--box", type=int, help="box size in px when the input does not state it")
    parser.add_argument("--poses", type=Path, help="cryoDRGN pose pkl (input)")
    parser.add_argument("--ctf", type=Path, help="cryoDRGN CTF pkl (input)")
    parser.add_argument(
        "--images", type=Path, help="with --poses/--ctf: .mrcs stack holding the particles in order"
    )
    parser.add_argument("--to-drgn", action="store_true", help="write a cryoDRGN pkl pair")
    parser.add_argument("--ctf-out", type=Path, help="cryoDRGN CTF pkl to write (with OUT.pkl)")
    parser.set_defaults(func=run)
    return parser


def load_input(args: argparse.Namespace):
    """The ParticleSet the arguments describe, and OUT."""
    if args.poses is not None or args.ctf is not None:
        if args.poses is None or args.ctf is None:
            raise CryogradError("convert: cryoDRGN input needs both --poses and --ctf")
        if len(args.paths) != 1:
            raise CryogradError("convert: with --poses/--ctf give only OUT")
        particles = read_drgn(args.poses, args.ctf, image_stack=args.images, angpix=args.angpix)
        return particles, args.paths[0]
    if len(args.paths) != 2:
        raise CryogradError("convert: give IN and OUT (or --poses P.pkl --ctf C.pkl OUT)")
    src, out = args.paths
    particles = read_particles(src, datadir=args.datadir, angpix=args.angpix, box_size=args.box)
    if particles.box_size is None and args.box is not None:
        particles.box_size = int(args.box)
    return particles, out


def run(args: argparse.Namespace) -> int:
    particles, out = load_input(args)
    missing = particles.check_images(missing_ok=True)  # bad index/box in existing stacks: error
    if missing:
        logger.warning(
            "%d referenced image files are missing (first: %s)", len(missing), missing[0]
        )
    if out.exists() and out.is_dir():
        raise CryogradError(f"{out}: is a folder")
    if not out.parent.is_dir():
        raise CryogradError(f"{out}: output folder {out.parent} does not exist")
    writer = WRITERS[".pkl"] if args.to_drgn else writer_for(out)
    if writer is None:
        endings = " or ".join(WRITERS)
        raise CryogradError(f"{out}: output must end in {endings} (or use --to-drgn)")
    written = writer.write(out, particles, WriteOptions(ctf_path=args.ctf_out))
    logger.info("wrote %s (%d particles)", " and ".join(map(str, written)), len(particles))
    return 0
