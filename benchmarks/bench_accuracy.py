"""Accuracy of the maps against the truth, cryograd beside relion_reconstruct (and cryoDRGN).

Simulated sets (RELION conventions, written as STAR + MRC stacks so that every program reads the
same files) from

* ``deposited``: EMD-5168 as TEMPy cut it (``../shared/data/tempy/emd_5168.map``), Fourier-cropped
  to the box: a band-limited map whose filament runs through the whole box (13 % of its energy
  lies outside the inscribed sphere); the shipped, masked ``emd_5168_64.mrc`` when it is absent;
* ``atomic``: a full-band map computed from the atomic model ``../shared/data/tempy/3MFP.pdb``
  (one Gaussian per atom, ``Z·exp(−(B + 10 Å²) s² / 4)``, evaluated as structure factors on the
  grid, so it has content up to Nyquist and is ~0 outside the molecule);

projected by cryograd's Fourier projector on a 4× padded grid (finer than any reconstruction's
2×), with CTFs (defocus 0.8–3.0 µm) and white noise of ``var(signal) / SNR``. For each set the
table gives, for every cryograd method and for ``relion_reconstruct --ctf`` (Debian's RELION
3.1.3; its maps equal RELION 5's), the mean FSC to the truth over shells 1..Nyquist over the whole
box and (in brackets) inside a soft sphere around the particle, the 0.5 / 0.143 crossings of the
whole-box FSC to the truth, cryograd's reported (half-map) resolution, and wall time. A peer that
is not installed is skipped, and the table says so.

Run ``python benchmarks/bench_accuracy.py`` (the quick settings, about 10 minutes on 2 cores) or
``--full`` (box 64/128/256, SNR 0.01–0.5, 1,000–50,000 particles, C1/C4: hours). Sets without
CTF are not simulated yet (``cryograd simulate`` always applies one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import torch
from bench_reconstruct import (
    _DRGN_MAIN,
    _peer_map,
    find_cryodrgn_python,
    write_cryodrgn_inputs,
)

from cryograd.data import demo_map_path
from cryograd.io.mrc import read_map, write_map
from cryograd.simulation import simulate
from cryograd.symmetry import symmetrize_volume
from cryograd.validation import fsc, resolution_at

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYOGRAD_SHARED_DATA", ROOT.parent / "shared" / "data"))

#: Element -> atomic number for the structure-factor map.
ELECTRONS = {"C": 6, "N": 7, "O": 8, "S": 16, "P": 15, "H": 1, "SE": 34}


@dataclass(frozen=True)
class Setting:
    truth: str  # "deposited" or "atomic"
    box: int
    n: int
    snr: float
    ctf: bool = True
    sym: str = "C1"


QUICK = [
    Setting("deposited", 64, 4000, 0.05),
    Setting("atomic", 64, 5000, 0.05),
    Setting("atomic", 64, 5000, 0.01),
    Setting("deposited", 64, 800, 0.05, sym="C4"),
    Setting("deposited", 64, 800, 0.05, sym="D2"),
    Setting("deposited", 128, 5000, 0.05),
]

FULL = QUICK + [
    Setting(t, box, n, snr, ctf, sym)
    for t in ("deposited", "atomic")
    for box, n in ((64, 1000), (128, 10000), (256, 50000))
    for snr in (0.01, 0.1, 0.5)
    for ctf in (True,)
    for sym in ("C1", "C4")
]


def fourier_crop(volume: np.ndarray, box: int) -> np.ndarray:
    """Central ``box³`` block of the centred DFT (densities keep their values)."""
    vol = torch.from_numpy(np.asarray(volume, dtype=np.float64))
    n = vol.shape[0]
    if n == box:
        return vol.numpy()
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol)))
    c, h = n // 2, box // 2
    if box > n:
        big = torch.zeros((box,) * 3, dtype=spec.dtype)
        big[h - c : h - c + n, h - c : h - c + n, h - c : h - c + n] = spec
        spec = big
    else:
        spec = spec[c - h : c - h + box, c - h : c - h + box, c - h : c - h + box]
    out = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spec))).real * (box / n) ** 3
    return out.numpy()


def deposited_truth(box: int) -> tuple[np.ndarray, float, str]:
    """EMD-5168 (TEMPy's 100³ cut) cropped to ``box``, or the shipped masked map."""
    path = SHARED / "tempy" / "emd_5168.map"
    if path.exists():
        with mrcfile.open(path, permissive=True) as m:
            data = np.asarray(m.data, dtype=np.float64)
            voxel = float(m.voxel_size.x)
        return fourier_crop(data, box), voxel * data.shape[0] / box, "EMD-5168 (TEMPy cut)"
    m = read_map(demo_map_path())
    return fourier_crop(m.data, box), m.voxel_size_angstrom * 64 / box, "emd_5168_64 (shipped)"


def read_pdb_atoms(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 3)`` coordinates (Å, x y z), ``(n,)`` electrons, ``(n,)`` B-factors (ATOM lines)."""
    xyz, z, b = [], [], []
    for line in path.read_text().splitlines():
        if not line.startswith(("ATOM", "HETATM")):
            continue
        element = line[76:78].strip().upper() or line[12:14].strip().upper()
        xyz.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
        z.append(ELECTRONS.get(element, 6))
        b.append(float(line[60:66]) if line[60:66].strip() else 30.0)
    return np.asarray(xyz), np.asarray(z, dtype=np.float64), np.asarray(b)


def atomic_truth(box: int, pixel_size: float) -> tuple[np.ndarray, float, str]:
    """A full-band map of 3MFP from its structure factors on the ``box`` grid."""
    xyz, electrons, bfac = read_pdb_atoms(SHARED / "tempy" / "3MFP.pdb")
    xyz = xyz - xyz.mean(axis=0)
    k = torch.fft.fftfreq(box, d=pixel_size, dtype=torch.float64)  # 1/Å
    kx = torch.fft.rfftfreq(box, d=pixel_size, dtype=torch.float64)
    s2 = k.view(-1, 1, 1) ** 2 + k.view(1, -1, 1) ** 2 + kx.view(1, 1, -1) ** 2
    spec = torch.zeros(s2.shape, dtype=torch.complex128)
    pos = torch.from_numpy(xyz)
    for start in range(0, len(xyz), 256):
        sl = slice(start, start + 256)
        amp = torch.from_numpy(electrons[sl]).view(-1, 1, 1, 1) * torch.exp(
            -(torch.from_numpy(bfac[sl]).view(-1, 1, 1, 1) + 10.0) * s2 / 4.0
        )
        phase = (
            pos[sl, 2].view(-1, 1, 1, 1) * k.view(1, -1, 1, 1)
            + pos[sl, 1].view(-1, 1, 1, 1) * k.view(1, 1, -1, 1)
            + pos[sl, 0].view(-1, 1, 1, 1) * kx.view(1, 1, 1, -1)
        )
        spec += (amp * torch.exp(-2j * np.pi * phase)).sum(0)
    vol = torch.fft.irfftn(spec, s=(box,) * 3)
    vol = torch.fft.fftshift(vol)  # the origin to voxel box // 2
    return vol.numpy() / pixel_size**3, pixel_size, "3MFP atoms (full band)"


def truth_of(setting: Setting) -> tuple[np.ndarray, float, str, float]:
    """Truth map, pixel size, its name and the radius (px) of the soft mask around it."""
    if setting.truth == "atomic":
        vol, px, name = atomic_truth(setting.box, 1.5 * 64 / setting.box)
        radius = 0.4 * setting.box
    else:
        vol, px, name = deposited_truth(setting.box)
        radius = 0.42 * setting.box
    if setting.sym != "C1":
        vol = symmetrize_volume(torch.from_numpy(vol), setting.sym).numpy()
    return vol, px, name, radius


def soft_sphere(box: int, radius: float, edge: float = 4.0) -> torch.Tensor:
    c = torch.arange(box, dtype=torch.float64) - box // 2
    r = torch.sqrt(c.view(-1, 1, 1) ** 2 + c.view(1, -1, 1) ** 2 + c.view(1, 1, -1) ** 2)
    t = ((radius + edge - r) / edge).clamp(0.0, 1.0)
    return 0.5 - 0.5 * torch.cos(np.pi * t)


def score(
    path: Path, truth: torch.Tensor, mask: torch.Tensor, px: float, *, try_axes: bool = False
) -> dict:
    """Mean FSC to the truth (whole box, masked) and the whole-box crossings; with ``try_axes``
    the best of the map as written, transposed and z-flipped (a peer's axis convention)."""
    with mrcfile.open(path, permissive=True) as m:
        data = np.asarray(m.data, dtype=np.float64)
    candidates = [data, data.transpose(2, 1, 0), data[::-1]] if try_axes else [data]
    scored = [(float(fsc(torch.from_numpy(c.copy()), truth)[1:].mean()), c) for c in candidates]
    vol = torch.from_numpy(max(scored, key=lambda t: t[0])[1].copy())
    box = truth.shape[0]
    whole = fsc(vol, truth).numpy()
    masked = fsc(vol, truth, mask=mask).numpy()
    return {
        "whole": float(whole[1:].mean()),
        "masked": float(masked[1:].mean()),
        "r05": resolution_at(whole, 0.5, box, px),
        "r0143": resolution_at(whole, 0.143, box, px),
    }


def run_timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def run_cryograd(method: str, star: Path, work: Path, setting: Setting, extra: list[str]) -> dict:
    out = work / f"cryograd_{method}{'_'.join(extra).replace('-', '')}"
    cmd = [sys.executable, "-m", "cryograd", "reconstruct", str(star), "-o", str(out)]
    cmd += ["--method", method, "--sym", setting.sym, "--force", "--no-progress", *extra]
    if not setting.ctf:
        cmd.append("--no-ctf")
    wall = run_timed(cmd, work)
    info = json.loads((out / "run.json").read_text())
    return {"map": out / "map.mrc", "wall": wall, "reported": info.get("resolution_143_angstrom")}


def run_relion(star: Path, work: Path, setting: Setting) -> dict | None:
    exe = shutil.which("relion_reconstruct")
    if exe is None:
        return None
    out = work / "relion.mrc"
    cmd = [exe, "--i", star.name, "--o", str(out), "--sym", setting.sym]
    if setting.ctf:
        cmd.append("--ctf")
    wall = run_timed(cmd, star.parent)  # RELION reads image names relative to where it runs
    return {"map": out, "wall": wall, "reported": None}


def run_cryodrgn(star: Path, work: Path, setting: Setting) -> dict | None:
    """cryoDRGN 4.3.1 ``backproject_voxel`` (no symmetry option: C1 sets only)."""
    python = find_cryodrgn_python(None)
    if python is None or setting.sym != "C1":
        return None
    stack, poses, ctf = write_cryodrgn_inputs(star, work)
    cmd = [python, "-c", _DRGN_MAIN, str(stack), "--poses", str(poses), "--ctf", str(ctf)]
    wall = run_timed([*cmd, "-o", str(work / "drgn")], work)
    return {"map": _peer_map(work, "drgn"), "wall": wall, "reported": None, "axes": True}


def one_setting(setting: Setting, methods: list[str], work: Path) -> list[dict]:
    truth_np, px, name, radius = truth_of(setting)
    truth = torch.from_numpy(truth_np)
    mask = soft_sphere(setting.box, radius)
    sim_dir = work / "data"
    truth_path = write_map(work / "truth.mrc", truth_np.astype(np.float32), px)
    sim = simulate(
        truth_path,
        setting.n,
        out_dir=sim_dir,
        snr=setting.snr,
        defocus_range_um=(0.8, 3.0),
        pad=4.0,
        seed=1,
        progress=False,
    )
    rows = []
    runs: list[tuple[str, dict | None]] = []
    for method in methods:
        extra = ["--epochs", "6"] if method in ("adam", "sgd") else []
        run = run_cryograd(method, sim.star_path, work, setting, extra)
        runs.append((f"cryograd {method}", run))
    relion = "relion_reconstruct" + (" --ctf" if setting.ctf else "")
    runs.append((relion, run_relion(sim.star_path, work, setting)))
    runs.append(("cryoDRGN backproject_voxel", run_cryodrgn(sim.star_path, work, setting)))
    for label, run in runs:
        row = {"setting": setting, "truth_name": name, "program": label}
        if run is None:
            row["skipped"] = "not installed"
        else:
            row.update(
                score(run["map"], truth, mask, px), wall=run["wall"], reported=run["reported"]
            )
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        "| set | program | mean FSC whole (masked) | 0.5 / 0.143 Å | reported Å | wall s |\n"
        "|---|---|---|---|---|---|"
    )
    print(head)
    for r in rows:
        s: Setting = r["setting"]
        label = (
            f"{s.truth} box {s.box}, {s.n}, SNR {s.snr}"
            + ("" if s.ctf else ", no CTF")
            + ("" if s.sym == "C1" else f", {s.sym}")
        )
        if "skipped" in r:
            print(f"| {label} | {r['program']} | skipped: {r['skipped']} | | | |")
            continue
        rep = f"{r['reported']:.2f}" if r["reported"] else "—"
        print(
            f"| {label} | {r['program']} | {r['whole']:.3f} ({r['masked']:.3f}) | "
            f"{r['r05']:.2f} / {r['r0143']:.2f} | {rep} | {r['wall']:.1f} |"
        )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the whole grid of settings (hours)")
    p.add_argument("--methods", default="direct", help="cryograd methods, comma-separated")
    p.add_argument("--only", type=int, nargs="*", help="indices of the settings to run")
    p.add_argument("--keep", type=Path, default=None, help="keep the data in this folder")
    args = p.parse_args(argv)
    settings = FULL if args.full else QUICK
    if args.only:
        settings = [settings[i] for i in args.only]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if shutil.which("relion_reconstruct") is None:
        print("relion_reconstruct not found: RELION rows skipped (apt-get install relion)")
    if find_cryodrgn_python(None) is None:
        print("cryoDRGN not found ($CRYODRGN_PYTHON, $PATH): its rows skipped")
    rows: list[dict] = []
    for setting in settings:
        with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
            work = Path(tmp)
            new = one_setting(setting, methods, work)
            rows += new
            print_table(new)
    print("\nAll settings:\n")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
