"""Every Python code block of the README runs, as a new user would run it.

The blocks run in a fresh interpreter, in a folder holding a small simulated data set from the
built-in demo map (``particles.star``, ``particles.mrcs``, ``ground_truth.mrc``), all blocks one
after another and then all of them a second time in the same process, so that a name the first run
rebinds (a lazily imported submodule shadowing a function, say) fails the second.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def test_readme_has_python_blocks():
    assert _blocks(), "README.md has no ```python block"


def test_readme_python_blocks_run_twice_in_one_fresh_interpreter(tmp_path):
    from cryograd.data import demo_map_path

    sim = subprocess.run(
        [
            sys.executable,
            "-m",
            "cryograd",
            "simulate",
            str(demo_map_path()),
            "-n",
            "300",
            "-o",
            str(tmp_path),
            "--snr",
            "0.5",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
    )
    assert sim.returncode == 0, sim.stderr
    runner = (
        "import sys\n"
        "blocks = [open(p).read() for p in sys.argv[1:]]\n"
        "for round_ in range(2):\n"
        "    for i, code in enumerate(blocks):\n"
        "        name = f'README block {i} (round {round_})'\n"
        "        exec(compile(code, name, 'exec'), {'__name__': '__main__'})\n"
        "print('README OK')\n"
    )
    paths = []
    for i, code in enumerate(_blocks()):
        p = tmp_path / f"block_{i}.py"
        p.write_text(code)
        paths.append(str(p))
    proc = subprocess.run(
        [sys.executable, "-c", runner, *paths],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0 and "README OK" in proc.stdout, proc.stdout + proc.stderr
