"""``cryograd info FILE``: summarise a particle file (STAR, .cs) or an MRC map/stack.

The file's reader, and so its summary, come from :data:`cryograd.io.registry.READERS`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryograd.io.registry import summarise


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="summarise a STAR, cryoSPARC .cs or MRC file",
        description=(
            "Summarise a particle file (RELION STAR 3.0-5.0, cryoSPARC .cs): particle count, box, "
            "pixel size, optics groups, defocus range, which of poses/shifts/CTF/half sets are "
            "present, and whether the referenced image files exist (absent images are reported, "
            "not fatal). For an MRC map or stack: shape, voxel size, origin."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--datadir", type=Path, help="folder the image paths are relative to")
    parser.add_argument("--angpix", type=float, help="pixel size in Å (overrides the file's)")
    parser.set_defaults(func=run)
    return parser


def _fmt_float(value: float) -> str:
    return f"{value:.6g}"


def _mrc_text(s: dict) -> list[str]:
    shape = s["shape"]
    if len(shape) == 2:
        dims = f"one image, {shape[1]} x {shape[0]} px (x, y)"
    elif s["format"] == "MRC stack":
        dims = f"{shape[0]} images of {shape[2]} x {shape[1]} px (x, y)"
    else:
        dims = f"{shape[2]} x {shape[1]} x {shape[0]} voxels (x, y, z)"
    vx, vy, vz = s["voxel_size_xyz_angstrom"]
    if not s["voxel_size_angstrom"] > 0:
        voxel = "not set in the header (0): give the pixel size yourself"
    elif len({round(v, 6) for v in (vx, vy, vz)}) == 1:
        voxel = f"{_fmt_float(vx)} A"
    else:
        voxel = f"{_fmt_float(vx)} x {_fmt_float(vy)} x {_fmt_float(vz)} A (x, y, z; anisotropic)"
    origin = ", ".join(_fmt_float(v) for v in s["origin_angstrom"])
    lines = [
        f"size: {dims}",
        f"shape (z, y, x): {tuple(shape)}" if len(shape) == 3 else f"shape (y, x): {tuple(shape)}",
        f"voxel size: {voxel}",
        f"origin: ({origin}) A",
    ]
    if any(s["start_voxels"]):
        lines.append(f"start index (nxstart, nystart, nzstart): {tuple(s['start_voxels'])}")
    lines.append(f"data mode: {s['mode']}")
    if s.get("header_permissive"):
        lines.append("note: header is non-standard (read permissively)")
    return lines


_FLAGS = {"poses": "poses", "shifts": "shifts", "ctf": "CTF", "half_sets": "half sets"}


def _format_text(s: dict) -> str:
    lines = [f"file: {s['file']}", f"format: {s['format']}"]
    if "particles" not in s:
        return "\n".join(lines + _mrc_text(s))
    box = s["box_size"]
    pixels = sorted({g["pixel_size_angstrom"] for g in s["optics_groups"]})
    if len(pixels) > 1:
        pixel = f"{_fmt_float(pixels[0])} to {_fmt_float(pixels[-1])} A (per optics group)"
    else:
        pixel = f"{_fmt_float(s['pixel_size_angstrom'])} A"
    lines += [
        f"particles: {s['particles']}",
        f"box size: {box} px"
        if box is not None
        else "box size: unknown (no rlnImageSize, no image stack at hand)",
        f"pixel size: {pixel}",
        f"optics groups: {len(s['optics_groups'])}",
    ]
    for g in s["optics_groups"]:
        gbox = f"box {g['box_size']}" if g["box_size"] is not None else "box unknown"
        lines.append(
            f"  {g['number']} {g['name']}: {g['particles']} particles, "
            f"{_fmt_float(g['pixel_size_angstrom'])} A/px, {gbox}"
        )
    present = [label for k, label in _FLAGS.items() if s[k]]
    absent = [label for k, label in _FLAGS.items() if not s[k]]
    lines.append(f"present: {', '.join(present) or 'none'}")
    lines.append(f"absent: {', '.join(absent) or 'none'}")
    if "defocus_range_angstrom" in s:
        lo, hi = s["defocus_range_angstrom"]
        lines.append(f"defocus range: {lo:.1f} to {hi:.1f} A")
        lines.append(f"voltages: {', '.join(f'{v:g}' for v in s['voltages_kv'])} kV")
    if s.get("ctf_premultiplied"):
        lines.append("CTF premultiplied: yes")
    if "half_set_sizes" in s:
        lines.append(f"half sets: {s['half_set_sizes'][0]} + {s['half_set_sizes'][1]}")
    if s.get("classes") is not None:
        lines.append(f"classes: {s['classes']}")
    if "max_abs_shift_px" in s:
        lines.append(f"largest origin: {s['max_abs_shift_px']:.2f} px")
    img = s["images"]
    if img.get("in_memory"):
        lines.append("images: in memory")
    else:
        n_missing = img["missing_stack_files"]
        lines.append(
            f"images: {img['with_image']} particles in {img['stack_files']} stack files, "
            + (
                f"{n_missing} missing ({img['particles_with_missing_image']} particles)"
                if n_missing
                else "all present"
            )
        )
        for p in img["missing_examples"]:
            lines.append(f"  missing: {p}")
        if n_missing > len(img["missing_examples"]):
            lines.append(f"  ... and {n_missing - len(img['missing_examples'])} more")
    for note in s.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    summary = summarise(args.file, datadir=args.datadir, angpix=args.angpix)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_format_text(summary))
    return 0
