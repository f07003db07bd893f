"""Build hook: the optional compiled CPU loops of cryograd (everything else is in pyproject.toml).

The extension is optional: where no C compiler is available the install still succeeds and cryograd
uses its pure-torch path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cryograd.projectors.fourier_slice._cpu_slices",
            sources=["src/cryograd/projectors/fourier_slice/_cpu_slices.c"],
            extra_compile_args=["-O3", "-fno-math-errno"],
            optional=True,
        )
    ]
)
