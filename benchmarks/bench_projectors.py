"""Images per second of cryograd's projector pairs, beside torch-fourier-slice.

Runs ``ForwardModel.project`` / ``backproject`` (Fourier-slice and real-space) for D = 64 and 128 in
float32 on the best device available (CUDA if present, else CPU), and torch-fourier-slice's
``project_3d_to_2d`` / ``backproject_2d_to_3d`` on the same volume and rotations (both pad 2).
torch-fourier-slice is installed into the running environment when absent, unless pip would
replace the installed torch (then that row is skipped with a message).

Usage::

    python benchmarks/bench_projectors.py [--sizes 64 128] [--device cpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time

import torch

from cryograd.forward import ForwardModel
from cryograd.geometry import euler_to_matrix

PEER_PACKAGES = ["torch-fourier-slice", "torch-ctf"]  # torch-ctf: undeclared dependency of 0.6.0


def ensure_peer() -> tuple[object | None, str]:
    """Import torch_fourier_slice, installing it with pip when absent and safe."""
    try:
        return importlib.import_module("torch_fourier_slice"), ""
    except ImportError:
        pass
    pip = [sys.executable, "-m", "pip", "install"]
    dry = subprocess.run([*pip, "--dry-run", *PEER_PACKAGES], capture_output=True, text=True)
    if dry.returncode != 0:
        return None, "pip could not resolve torch-fourier-slice: " + dry.stderr.strip()[-200:]
    would = " ".join(line for line in dry.stdout.splitlines() if line.startswith("Would install"))
    if any(tok.startswith("torch-2") or tok.startswith("torch-1") for tok in would.split()):
        return None, f"skipped: installing torch-fourier-slice would replace torch ({would})"
    run = subprocess.run([*pip, *PEER_PACKAGES], capture_output=True, text=True)
    if run.returncode != 0:
        return None, "pip install torch-fourier-slice failed: " + run.stderr.strip()[-200:]
    try:
        return importlib.import_module("torch_fourier_slice"), ""
    except ImportError as exc:
        return None, f"torch_fourier_slice does not import: {exc}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    ang = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    ang = ang * torch.tensor([360.0, 180.0, 360.0], dtype=torch.float64)
    return euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2]).float()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip torch-fourier-slice")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    peer, why = (None, "skipped (--no-peer)") if args.no_peer else ensure_peer()
    gen = torch.Generator().manual_seed(0)
    print(
        f"device: {device} ({torch.cuda.get_device_name(device) if gpu else 'CPU'}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32"
    )
    rows = []
    for d in args.sizes:
        volume = torch.randn(d, d, d, generator=gen).to(device)
        # Image counts sized to take about a second each on 2 CPU cores.
        counts = {
            "fourier": (2048 if gpu else max(16, 2 * 65536 // d**2 * 16)),
            "real": (512 if gpu else max(2, 8 * 2**18 // d**3)),
            "peer": (2048 if gpu else max(16, 2 * 65536 // d**2 * 16)),
        }
        for name in ("fourier", "real"):
            b = counts[name]
            rot = random_rotations(b, gen).to(device)
            model = ForwardModel(d, 1.0, name)
            images = model.project(volume, rot)
            tp = timed(lambda m=model, r=rot, v=volume: m.project(v, r), device, args.repeats)
            tb = timed(lambda m=model, r=rot, i=images: m.backproject(i, r), device, args.repeats)
            rows.append((f"cryograd {name}", d, b, b / tp, b / tb))
        if peer is not None:
            b = counts["peer"]
            # torch-fourier-slice rotates xyz column vectors: RELION's Aᵀ gives the same views.
            rot = random_rotations(b, gen).to(device).transpose(-1, -2).contiguous()
            images = peer.project_3d_to_2d(volume, rot, pad_factor=2.0)
            tp = timed(
                lambda r=rot, v=volume: peer.project_3d_to_2d(v, r, pad_factor=2.0),
                device,
                args.repeats,
            )
            tb = timed(
                lambda r=rot, i=images: peer.backproject_2d_to_3d(i, r, pad_factor=2.0),
                device,
                args.repeats,
            )
            rows.append(("torch-fourier-slice", d, b, b / tp, b / tb))
    print(f"{'method':<22}{'D':>5}{'images':>8}{'project img/s':>16}{'backproject img/s':>20}")
    for name, d, b, p, bp in rows:
        print(f"{name:<22}{d:>5}{b:>8}{p:>16.1f}{bp:>20.1f}")
    if peer is None:
        print(f"torch-fourier-slice: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
