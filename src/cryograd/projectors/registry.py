"""The projectors by name: the CLI's ``--projector`` choices and the ``projector`` argument of
:class:`~cryograd.forward.ForwardModel` come from :data:`PROJECTORS`.

To add a projector: a package ``projectors/<name>/`` with its ``geometry.py`` and backends, a class
following :class:`cryograd.projectors.base.Projector` (subclass
:class:`~cryograd.projectors.base.ChunkedProjector` and supply ``steps``), and one line here.
"""

from __future__ import annotations

from typing import Any

from cryograd.errors import CryogradError
from cryograd.projectors.base import ChunkedProjector
from cryograd.projectors.fourier_slice.projector import FourierSliceProjector
from cryograd.projectors.real_space.projector import RealSpaceProjector

__all__ = ["PROJECTORS", "make_projector"]

PROJECTORS: dict[str, type[ChunkedProjector]] = {
    "fourier": FourierSliceProjector,
    "real": RealSpaceProjector,
}


def make_projector(name: str, box_size: int, **options: Any) -> ChunkedProjector:
    """The projector ``name`` (a key of :data:`PROJECTORS`) for boxes of ``box_size``.

    ``options`` are the projector's keyword parameters (``pad``, ``gridding``, ``batch_size``;
    the real-space projector ignores ``pad`` and ``gridding``).
    """
    if name not in PROJECTORS:
        choices = " or ".join(repr(k) for k in PROJECTORS)
        raise CryogradError(f"unknown projector {name!r}: use {choices}")
    return PROJECTORS[name](box_size, **options)
