"""``cryograd`` entry point: dispatch to subcommands, turn user errors into one line on stderr."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from cryograd.errors import CryogradError, print_error

# Subcommand name -> module that defines ``add_parser(subparsers)``.
COMMANDS: dict[str, str] = {
    "info": "cryograd.cli.info",
    "convert": "cryograd.cli.convert",
    "project": "cryograd.cli.project",
    "simulate": "cryograd.cli.simulate",
    "reconstruct": "cryograd.cli.reconstruct",
    "fsc": "cryograd.cli.fsc",
    "postprocess": "cryograd.cli.postprocess",
    "demo": "cryograd.cli.demo",
}


def os_error_message(exc: OSError) -> str:
    """``path: reason`` for an :class:`OSError` (``No space left on device``, ...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    where = " -> ".join(names) if names else "output"
    hint = {
        errno.ENOSPC: "; free some space or write elsewhere",
        errno.EDQUOT: "; the disk quota is exceeded",
        errno.EACCES: "; choose a folder you can write to",
        errno.EFBIG: "; the file size limit (ulimit -f) is exceeded",
    }.get(exc.errno or 0, "")
    return f"{where}: {reason}{hint}"


def quiet_openmp_waits() -> None:
    """Let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy.

    libgomp (torch's, MKL's and the compiled loops' thread pools) otherwise keeps idle threads
    spinning; on cores shared with other jobs the spinning threads take the time the working
    threads need, and every small parallel torch op then waits for a scheduler time slice (2
    busy cores, 2 threads: a 8,320-element float64 ``sqrt`` 8 ms instead of 0.1 ms; the box-128
    ``reconstruct`` 24 s of CPU instead of 14 s). libgomp reads the variable when it loads, so
    this runs before torch is imported and does nothing after.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def huge_pages_for_large_tensors() -> None:
    """Transparent huge pages for torch's large CPU allocations (``THP_MEM_ALLOC_ENABLE=1``, read
    by torch's CPU allocator) unless the user set the variable.

    Every grid, slab of the Wiener division or FFT output of a large box otherwise comes from new
    pages that the kernel zeroes one 4 KB page fault at a time (box 448, pad 2: 45 million faults
    and 128 s of system time in a 6-minute run; one box-256 Wiener division 1.2 s of system time
    instead of 0.5 s). Runs before torch is imported (torch reads the variable once).
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    from cryograd import __version__

    parser = argparse.ArgumentParser(
        prog="cryograd",
        description="Single-particle cryo-EM 3D reconstruction with matched projectors.",
    )
    parser.add_argument("--version", action="version", version=f"cryograd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command not built into this installation
            if exc.name == module_name:
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryograd``; returns the exit status (0, or 2 for bad input)."""
    quiet_openmp_waits()
    huge_pages_for_large_tensors()
    parser = build_parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given, for run.json and for spawning processes
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks
    try:
        result = args.func(args)
    except CryogradError as exc:
        print_error(str(exc))
        return exc.exit_code
    except OSError as exc:  # disk full, no permission, file too large: one line, the path named
        print_error(os_error_message(exc))
        return CryogradError.exit_code
    except KeyboardInterrupt:
        print("cryograd: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
