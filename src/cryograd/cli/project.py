"""``cryograd project MAP PARTICLES -o OUT.mrcs``: project a map like ``relion_project``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from cryograd.projectors.registry import PROJECTORS
from cryograd.simulation import project_particles

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "project",
        help="project a map at the poses, origins and CTFs of a particle file",
        description=(
            "Project MAP at the orientations, origins (the projection is shifted by -origin) and, "
            "by default when present, CTFs of the particles in PARTICLES (RELION STAR or "
            "cryoSPARC .cs), as relion_project does. The map's box must equal the particles' "
            "and its voxel size their pixel size within 1%."
        ),
    )
    parser.add_argument("map", type=Path, metavar="MAP", help="cubic MRC map")
    parser.add_argument("particles", type=Path, metavar="PARTICLES", help="STAR or .cs file")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.mrcs")
    parser.add_argument("--projector", choices=tuple(PROJECTORS), default="fourier")
    parser.add_argument(
        "--ctf",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply the CTFs (default: when the file has them)",
    )
    parser.add_argument("--datadir", type=Path, help="folder the image paths are relative to")
    parser.add_argument("--angpix", type=float, help="pixel size in Å (overrides the file's)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (256)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = project_particles(
        args.map,
        args.particles,
        args.output,
        projector=args.projector,
        use_ctf=args.ctf,
        datadir=args.datadir,
        angpix=args.angpix,
        batch_size=args.batch_size,
        device=device,
    )
    logger.info("wrote %s", out)
    return 0
