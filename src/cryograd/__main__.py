"""``python -m cryograd`` (so that ``torchrun -m cryograd reconstruct ...`` works)."""

from cryograd.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
