"""Build hook: the optional compiled CPU loops of cryograd (everything else is in pyproject.toml).

The extension is optional: where no C compiler is available the install still succeeds and cryograd
uses its pure-torch path. The loops run on several threads with OpenMP where the compiler supports
``-fopenmp``; without it they build single-threaded.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = "src/cryograd/projectors/fourier_slice"


def _compiler_has_openmp(cc: list[str]) -> bool:
    """Whether ``cc -fopenmp`` compiles and links a small OpenMP program."""
    if os.environ.get("CRYOGRAD_NO_OPENMP"):
        return False
    code = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as fh:
            fh.write(code)
        try:
            done = subprocess.run(
                [*cc, "-fopenmp", src, "-o", os.path.join(tmp, "t")],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return done.returncode == 0


class BuildExt(build_ext):
    """``build_ext`` that adds ``-fopenmp`` where the C compiler supports it."""

    def build_extensions(self) -> None:
        cc = getattr(self.compiler, "compiler_so", None) or [shutil.which("cc") or "cc"]
        if sys.platform != "win32" and _compiler_has_openmp([cc[0]]):
            for ext in self.extensions:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "cryograd.projectors.fourier_slice._cpu_slices",
            # the STAR row parser, the image statistics and the Euler-angle rotations ride along
            # (ctypes, cryograd._native)
            sources=[
                f"{HERE}/_cpu_slices.c",
                "src/cryograd/io/_star_rows.c",
                "src/cryograd/_image_stats.c",
                "src/cryograd/_euler.c",
            ],
            depends=[f"{HERE}/_cpu_slices_impl.h"],
            extra_compile_args=["-O3", "-fno-math-errno"],
            optional=True,
        )
    ],
)
