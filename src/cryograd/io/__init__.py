"""File formats.

* :mod:`cryograd.io.registry`: ``READERS`` / ``WRITERS`` by file extension and
  :func:`~cryograd.io.registry.read_particles` (``cryograd info`` and ``convert`` use them).
* RELION STAR: :mod:`~cryograd.io.star` (reading, by RELION version through
  :mod:`~cryograd.io.star_optics`), :mod:`~cryograd.io.star_write`, the parser
  :mod:`~cryograd.io.star_parser` (``starfile``'s tables, faster) and
  :mod:`~cryograd.io.star_table`.
* cryoSPARC ``.cs``: :mod:`~cryograd.io.cryosparc`; cryoDRGN pkl: :mod:`~cryograd.io.drgn`;
  MRC maps and stacks: :mod:`~cryograd.io.mrc`; atomic writes: :mod:`~cryograd.io.atomic`.

This package imports none of its modules: :mod:`cryograd.particle_set` imports
:mod:`cryograd.io.mrc`, and the readers import :mod:`cryograd.particle_set`, so importing the
readers here would make a circle.

Adding a format: a module here with ``read(path, options)`` (building a
:class:`~cryograd.particle_set.ParticleSet`) and/or ``write(path, particles, options)``, and one
``register_reader`` / ``register_writer`` call at the end of :mod:`cryograd.io.registry`.
"""
