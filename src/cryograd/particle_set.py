"""``ParticleSet``: particle metadata in numpy arrays plus lazy, memory-mapped images.

A set holds, for ``n`` particles: RELION orientation matrices ``A`` (float64), origins in pixels
(and Å through the per-particle pixel size), RELION CTF parameters, the premultiplied flag, optics
group, gold-standard half set, class number, and where each image lives (stack file and 0-based
index). Metadata are arrays, so a million particles cost tens of MB; images are read only by
:meth:`ParticleSet.images`, grouped by stack file, from memory-mapped stacks kept open in a small
cache.

This module imports nothing from the readers: they build sets. To read a file use
:func:`cryograd.io.registry.read_particles` (also :func:`cryograd.particles.read_particles`),
which picks the reader by the file's extension.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryograd.ctf import CTFParams, CtfSwitches, electron_wavelength_angstrom
from cryograd.errors import CryogradError
from cryograd.io.mrc import open_stack, read_map_header
from cryograd.optics.ewald import EwaldSettings
from cryograd.optics.groups import GroupAberrations
from cryograd.optics.magnification import reference_grid_scale
from cryograd.optics.particles import ParticleOptics
from cryograd.optics.rescale import GroupSampling, group_sampling, resample_images

try:  # optional: splits a million image names in C++ (pandas' Arrow strings)
    import pyarrow as pa
    import pyarrow.compute as pc
except ImportError:  # pragma: no cover - pandas' own string methods then
    pa = pc = None

__all__ = [
    "CTF_COLUMNS",
    "OpticsGroup",
    "ParticleSet",
    "parse_image_names",
    "resolve_image_path",
    "resolve_image_paths",
]

logger = logging.getLogger(__name__)

# Columns of ``ParticleSet.ctf`` (n, 9), the order of CTFParams' fields.
CTF_COLUMNS = (
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "defocus_angle_degrees",
    "voltage_kv",
    "spherical_aberration_mm",
    "amplitude_contrast",
    "phase_shift_degrees",
    "b_factor",
    "scale",
)

_MAX_OPEN_STACKS = 64


@dataclass
class OpticsGroup:
    """One optics group: its number in the file, name, pixel size and box size.

    Attributes
    ----------
    number
        ``rlnOpticsGroup`` (1-based).
    name
        ``rlnOpticsGroupName`` (or a made-up ``opticsGroupN``).
    pixel_size_angstrom
        ``rlnImagePixelSize`` in Å.
    box_size
        ``rlnImageSize`` in pixels (None when unknown).
    extra
        Other optics fields kept as read (``rlnBeamTiltX/Y`` in mrad, ``rlnOddZernike`` and
        ``rlnEvenZernike`` as ``[c0,c1,...]`` strings, ``rlnMagMat00..11``, voltage, Cs, ...):
        :meth:`ParticleSet.group_aberrations` reads the aberrations from here.
    sampling
        None when the group's images have the set's box; else how they are resampled onto it
        (:class:`~cryograd.optics.rescale.GroupSampling`, a group of another ``rlnImageSize``).
    """

    number: int
    name: str
    pixel_size_angstrom: float
    box_size: int | None
    extra: dict = field(default_factory=dict)
    sampling: GroupSampling | None = None

    @property
    def image_pixel_angstrom(self) -> float:
        """Pixel size of the images as the models see them, Å: ``pixel_size_angstrom``, or the
        resampled images' (``sampling.image_pixel_angstrom``)."""
        if self.sampling is None:
            return self.pixel_size_angstrom
        return self.sampling.image_pixel_angstrom


class _StackCache:
    """Least-recently-used cache of open memory-mapped stacks."""

    def __init__(self, max_open: int = _MAX_OPEN_STACKS) -> None:
        self.max_open = max_open
        self._open: OrderedDict[str, tuple[np.ndarray, Any]] = OrderedDict()

    def get(self, path: Path) -> np.ndarray:
        key = str(path)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key][0]
        data, mrc = open_stack(path)
        self._open[key] = (data, mrc)
        while len(self._open) > self.max_open:
            _, (_, old) = self._open.popitem(last=False)
            old.close()
        return data

    def close(self) -> None:
        for _, mrc in self._open.values():
            mrc.close()
        self._open.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


@dataclass(eq=False)
class ParticleSet:
    """Metadata of ``n`` particles and lazy access to their images.

    Attributes
    ----------
    path
        The metadata file (None for sets made in memory).
    box_size
        Image side in pixels (None when nothing states it: e.g. a RELION 3.0 file without images).
    pixel_size_angstrom
        Pixel size of the set in Å (the first optics group's; see ``pixel_sizes_angstrom``).
    rotations
        ``(n, 3, 3)`` float64 RELION ``A`` matrices, or None.
    shifts_px
        ``(n, 2)`` float64 RELION origin ``(x, y)`` in pixels (the shift that centres the
        particle), or None.
    ctf
        ``(n, 9)`` float64 CTF table in ``CTF_COLUMNS`` order, or None.
    ctf_premultiplied
        ``(n,)`` bool.
    optics_group
        ``(n,)`` int, the ``number`` of each particle's optics group.
    optics_groups
        The :class:`OpticsGroup` list.
    half_set
        ``(n,)`` int with values 1/2 (``rlnRandomSubset``), or None.
    class_number
        ``(n,)`` int (``rlnClassNumber``), or None.
    stack_files
        Unique image files (absolute or as resolved).
    stack_ids
        ``(n,)`` int32 index into ``stack_files`` (-1: no image).
    stack_indices
        ``(n,)`` int64 0-based image index in its stack.
    image_array
        Images held in memory instead (``(n, D, D)``), e.g. for simulated data; or None.
    notes
        Things worth telling the user (unused fields, defaults assumed).
    source_format
        What the set was read from (for ``info``).
    extra_columns
        Per-particle STAR columns cryograd does not interpret (``rlnMicrographName``,
        ``rlnCoordinateX/Y``, ``rlnGroupName``, ...), ``n`` rows in particle order, kept so that
        ``write_star`` passes them on; or None. Not sent to worker processes (pickling).
    ctf_switches
        ``relion_reconstruct``'s CTF switches applied to every CTF of the set (``reconstruct
        --ctf-intact-first-peak`` etc.; none by default).
    ewald
        None, or :class:`~cryograd.optics.ewald.EwaldSettings`: the Fourier insertion then
        corrects for the Ewald sphere's curvature (``reconstruct --ewald``,
        :mod:`cryograd.solvers.ewald`).
    """

    path: Path | None
    box_size: int | None
    pixel_size_angstrom: float
    rotations: np.ndarray | None
    shifts_px: np.ndarray | None
    ctf: np.ndarray | None
    ctf_premultiplied: np.ndarray
    optics_group: np.ndarray
    optics_groups: list[OpticsGroup]
    half_set: np.ndarray | None = None
    class_number: np.ndarray | None = None
    stack_files: list[Path] = field(default_factory=list)
    # np.ndarray; None on input means "no stacks" and __post_init__ fills both arrays.
    stack_ids: Any = None
    stack_indices: Any = None
    image_array: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    source_format: str = "memory"
    extra_columns: pd.DataFrame | None = None
    ctf_switches: CtfSwitches = field(default_factory=CtfSwitches)
    ewald: EwaldSettings | None = None

    def __post_init__(self) -> None:
        n = len(self.optics_group)
        self._cache = _StackCache()
        self._stack_checked: set[int] = set()
        if self.stack_ids is None:
            self.stack_ids = np.full(n, -1, dtype=np.int32)
        if self.stack_indices is None:
            self.stack_indices = np.zeros(n, dtype=np.int64)

    def __getstate__(self) -> dict:
        # open memory maps do not pickle (e.g. to DataLoader workers): each copy reopens its own
        state = dict(self.__dict__)
        state.pop("_cache", None)
        state["extra_columns"] = None  # only write_star needs them; keep worker copies small
        state["_stack_checked"] = set()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache = _StackCache()

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return int(len(self.optics_group))

    def __repr__(self) -> str:
        return (
            f"ParticleSet(n={len(self)}, box_size={self.box_size}, "
            f"pixel_size_angstrom={self.pixel_size_angstrom:.4g}, path={self.path})"
        )

    @property
    def pixel_sizes_angstrom(self) -> np.ndarray:
        """``(n,)`` float64 pixel size of each particle's images as the models see them (a group
        of another box: its resampled images', :attr:`OpticsGroup.image_pixel_angstrom`)."""
        return self._per_particle({g.number: g.image_pixel_angstrom for g in self.optics_groups})

    @property
    def file_pixel_sizes_angstrom(self) -> np.ndarray:
        """``(n,)`` float64 ``rlnImagePixelSize`` of each particle's optics group, as read."""
        return self._per_particle({g.number: g.pixel_size_angstrom for g in self.optics_groups})

    @property
    def file_box_sizes(self) -> np.ndarray:
        """``(n,)`` float64 ``rlnImageSize`` of each particle's optics group (the set's box where
        the group does not say)."""
        own = float(self.box_size or 0)
        return self._per_particle({g.number: float(g.box_size or own) for g in self.optics_groups})

    def _per_particle(self, lookup: dict[int, float]) -> np.ndarray:
        """``(n,)`` float64 value of each particle's optics group from ``{number: value}``."""
        if len(lookup) == 1:
            return np.full(len(self), next(iter(lookup.values())), dtype=np.float64)
        numbers = np.array(sorted(lookup))
        values = np.array([lookup[k] for k in numbers], dtype=np.float64)
        return values[np.searchsorted(numbers, self.optics_group)]

    @property
    def shifts_angstrom(self) -> np.ndarray | None:
        """``(n, 2)`` origins in Å (``shifts_px · pixel size``), or None."""
        if self.shifts_px is None:
            return None
        return self.shifts_px * self.pixel_sizes_angstrom[:, None]

    @property
    def has_ctf(self) -> bool:
        return self.ctf is not None

    @property
    def has_images(self) -> bool:
        return self.image_array is not None or bool(np.any(self.stack_ids >= 0))

    def ctf_params(
        self,
        indices=None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> CTFParams | None:
        """CTF parameters of ``indices`` (all when None) as :class:`CTFParams`, or None."""
        if self.ctf is None:
            return None
        table = self.ctf if indices is None else self.ctf[_as_index(indices, len(self))]
        tensor = torch.as_tensor(np.ascontiguousarray(table), dtype=dtype, device=device)
        return CTFParams(*[tensor[:, i].contiguous() for i in range(len(CTF_COLUMNS))])

    # ------------------------------------------------------------------ optics
    def group_aberrations(self) -> GroupAberrations:
        """Beam tilt, Zernike terms and magnification of :attr:`optics_groups` (in list order),
        from their ``extra`` fields (RELION's ``ObservationModel``).

        Raises
        ------
        CryogradError
            A malformed or incomplete aberration list, or a singular magnification matrix.
        """
        cached = self.__dict__.get("_aberrations")
        if cached is not None:
            return cached
        table: dict[str, list] = {}
        columns = {k for g in self.optics_groups for k in g.extra}
        defaults = {"rlnOddZernike": "[0,0]", "rlnEvenZernike": "[0]", "rlnMagMat00": 1.0}
        defaults.update({"rlnMagMat11": 1.0, "rlnMagMat01": 0.0, "rlnMagMat10": 0.0})
        defaults.update({"rlnBeamTiltX": 0.0, "rlnBeamTiltY": 0.0})
        for name in sorted(columns & set(defaults)):
            table[name] = [g.extra.get(name, defaults[name]) for g in self.optics_groups]
        voltages, cs = [], []
        for g in self.optics_groups:
            members = np.nonzero(self.optics_group == g.number)[0]
            row = self.ctf[members[0]] if self.ctf is not None and len(members) else None
            voltages.append(_group_value(g, "rlnVoltage", row, 3, 300.0))
            cs.append(_group_value(g, "rlnSphericalAberration", row, 4, 2.7))
        table["rlnSphericalAberration"] = cs
        wavelengths = electron_wavelength_angstrom(torch.tensor(voltages, dtype=torch.float64))
        source = str(self.path) if self.path is not None else "particle set"
        out = GroupAberrations.from_table(table, wavelengths.tolist(), source)
        self.__dict__["_aberrations"] = out
        return out

    def particle_optics(self, indices=None, *, device=None) -> ParticleOptics | None:
        """RELION's observation model of particles ``indices`` (all when None), or None when it
        changes nothing (no aberrations, identity magnification, every group on the first
        group's pixel size, no CTF switches): the forward model and the insertion then run
        their plain paths."""
        ab = self.group_aberrations()
        pixel = torch.tensor(
            [g.image_pixel_angstrom for g in self.optics_groups], dtype=torch.float64
        )
        band = torch.tensor(
            [g.sampling.band_radius if g.sampling else np.inf for g in self.optics_groups],
            dtype=torch.float64,
        )
        box = int(self.box_size or 0)
        scale = reference_grid_scale(box, pixel, box, float(self.pixel_size_angstrom))
        scale = torch.where((scale - 1.0).abs() < 1e-6, torch.ones_like(scale), scale)
        numbers = np.array([g.number for g in self.optics_groups])
        idx = np.arange(len(self)) if indices is None else _as_index(indices, len(self))
        order = np.argsort(numbers)
        rows = order[np.searchsorted(numbers[order], self.optics_group[idx])]
        optics = ParticleOptics(
            group=torch.as_tensor(rows, dtype=torch.int64, device=device),
            aberrations=ab,
            pixel_size_angstrom=pixel,
            grid_scale=scale,
            switches=self.ctf_switches,
            band_radius=band,
        )
        trivial = not (
            optics.has_odd or optics.has_even or optics.changes_geometry or optics.has_band
        )
        return None if trivial and not self.ctf_switches.any else optics

    # ------------------------------------------------------------------ images
    def image_name(self, index: int) -> str | None:
        """RELION ``NNNNNN@path`` name of one image (None when it has none)."""
        sid = int(self.stack_ids[index])
        if sid < 0:
            return None
        return f"{int(self.stack_indices[index]) + 1:06d}@{self.stack_files[sid]}"

    def missing_stacks(self) -> list[Path]:
        """Referenced stack files that do not exist."""
        used = np.unique(self.stack_ids[self.stack_ids >= 0])
        return [self.stack_files[i] for i in used if not Path(self.stack_files[i]).is_file()]

    def check_images(self, *, missing_ok: bool = True) -> list[Path]:
        """Check every referenced stack that exists from its header alone (no pixels read).

        Checks that images are square, that their box equals ``box_size`` and that every image
        index lies inside its stack. Returns the missing stack files.

        Raises
        ------
        CryogradError
            On the first problem (or on a missing stack when ``missing_ok`` is False).
        """
        missing: list[Path] = []
        used = np.unique(self.stack_ids[self.stack_ids >= 0])
        if len(used) == 0:
            return missing
        # the largest index needed from each stack
        max_index = np.full(len(self.stack_files), -1, dtype=np.int64)
        has = self.stack_ids >= 0
        np.maximum.at(max_index, self.stack_ids[has], self.stack_indices[has])
        # the smallest and largest rlnImageSize of each stack's particles (one box per stack)
        boxes = self.file_box_sizes[has].astype(np.int64)
        box_lo = np.full(len(self.stack_files), np.iinfo(np.int64).max, dtype=np.int64)
        box_hi = np.full(len(self.stack_files), -1, dtype=np.int64)
        np.minimum.at(box_lo, self.stack_ids[has], boxes)
        np.maximum.at(box_hi, self.stack_ids[has], boxes)
        for sid in used:
            stack = Path(self.stack_files[sid])
            if not stack.is_file():
                if not missing_ok:
                    raise CryogradError(f"{self.path}: image stack {stack} not found")
                missing.append(stack)
                continue
            try:
                shape = read_map_header(stack).shape
            except CryogradError as exc:
                raise CryogradError(f"{exc} (an image stack of {self.path})") from None
            n_images = 1 if len(shape) == 2 else shape[0]
            ny, nx = shape[-2:]
            if nx != ny:
                raise CryogradError(f"{stack}: images are not square ({nx} x {ny})")
            want = {int(box_lo[sid]), int(box_hi[sid])}
            if self.box_size is not None and want != {nx}:
                want.discard(nx)
                raise CryogradError(
                    f"{stack}: image box {nx} differs from rlnImageSize {want.pop()} in {self.path}"
                )
            if max_index[sid] >= n_images:
                rows = np.nonzero((self.stack_ids == sid) & (self.stack_indices >= n_images))[0]
                raise CryogradError(
                    f"{self.path}: row {int(rows[0]) + 1}: image index "
                    f"{int(self.stack_indices[rows[0]]) + 1} is beyond the {n_images} images "
                    f"of {stack}"
                )
        return missing

    def images(self, indices) -> np.ndarray:
        """Read images by index, lazily from memory-mapped stacks.

        Parameters
        ----------
        indices
            Integer indices (or a slice / boolean mask) into the set.

        Returns
        -------
        np.ndarray
            float32 ``(b, D, D)`` in ``(y, x)`` order as ``mrcfile`` gives them.

        Raises
        ------
        CryogradError
            Missing stack, index beyond the stack, stack box different from the set's box,
            non-square images, or a particle without an image.
        """
        idx = _as_index(indices, len(self))
        if self.image_array is not None:
            return np.asarray(self.image_array[idx], dtype=np.float32)
        if len(idx) == 0:
            d = self.box_size or 0
            return np.zeros((0, d, d), dtype=np.float32)
        sids = self.stack_ids[idx]
        if np.any(sids < 0):
            bad = int(idx[np.argmax(sids < 0)])
            raise CryogradError(f"{self.path}: particle {bad + 1} has no image (no rlnImageName)")
        out: np.ndarray | None = None
        for sid in np.unique(sids):  # group reads by stack file
            where = np.nonzero(sids == sid)[0]
            stack_path = Path(self.stack_files[sid])
            data = self._open_stack(int(sid), stack_path)
            frames = self.stack_indices[idx[where]]
            if frames.max() >= data.shape[0] or frames.min() < 0:
                row = int(idx[where][np.argmax(frames >= data.shape[0])])
                raise CryogradError(
                    f"{self.path}: row {row + 1}: image index {int(frames.max()) + 1} is beyond "
                    f"the {data.shape[0]} images of {stack_path}"
                )
            if out is None:
                d = self.box_size or data.shape[1]
                out = np.empty((len(idx), d, d), dtype=np.float32)
            order = np.argsort(frames, kind="stable")
            block = data[frames[order]]
            if block.shape[-1] != out.shape[-1]:
                block = self._resampled(block, idx[where[order]], stack_path)
            out[where[order]] = block
            _release_pages(data)
        assert out is not None  # idx is not empty
        return out

    def _resampled(self, block: np.ndarray, rows: np.ndarray, stack_path: Path) -> np.ndarray:
        """``block`` ``(b, N_g, N_g)``, the images of particles ``rows`` from ``stack_path``,
        resampled onto the set's box by their optics group's sampling."""
        groups = {g.number: g for g in self.optics_groups}
        numbers = np.unique(self.optics_group[rows])
        group = groups[int(numbers[0])]
        if len(numbers) > 1 or group.sampling is None or group.box_size != block.shape[-1]:
            bad = next(
                (groups[int(k)] for k in numbers if groups[int(k)].box_size != block.shape[-1]),
                group,
            )
            raise CryogradError(
                f"{stack_path}: image box {block.shape[-1]} differs from rlnImageSize "
                f"{bad.box_size or self.box_size} of optics group {bad.number} in {self.path}"
            )
        return resample_images(block, group.sampling.crop_box, int(self.box_size or 0))

    def _other_boxes(self) -> set[int]:
        """Image boxes of optics groups resampled onto the set's box."""
        return {int(g.box_size) for g in self.optics_groups if g.sampling and g.box_size}

    def _open_stack(self, sid: int, stack_path: Path) -> np.ndarray:
        if not stack_path.is_file():
            raise CryogradError(
                f"{self.path}: image stack {stack_path} not found (use --datadir to say where "
                "the images are)"
            )
        try:
            data = self._cache.get(stack_path)
        except CryogradError as exc:
            raise CryogradError(f"{exc} (an image stack of {self.path})") from None
        if sid not in self._stack_checked:
            if data.shape[1] != data.shape[2]:
                raise CryogradError(
                    f"{stack_path}: images are not square ({data.shape[2]} x {data.shape[1]})"
                )
            ok = {self.box_size} | self._other_boxes()
            if self.box_size is not None and data.shape[1] not in ok:
                raise CryogradError(
                    f"{stack_path}: image box {data.shape[1]} differs from rlnImageSize "
                    f"{self.box_size} in {self.path}"
                )
            self._stack_checked.add(sid)
        return data

    def close(self) -> None:
        """Close every open memory map."""
        self._cache.close()

    # ------------------------------------------------------------------ subsets
    def subset(self, indices) -> ParticleSet:
        """A new set with the particles ``indices`` (same stacks, same optics)."""
        idx = _as_index(indices, len(self))

        def take(a):
            return None if a is None else a[idx]

        return replace(
            self,
            rotations=take(self.rotations),
            shifts_px=take(self.shifts_px),
            ctf=take(self.ctf),
            ctf_premultiplied=self.ctf_premultiplied[idx],
            optics_group=self.optics_group[idx],
            half_set=take(self.half_set),
            class_number=take(self.class_number),
            stack_ids=self.stack_ids[idx],
            stack_indices=self.stack_indices[idx],
            image_array=take(self.image_array),
            notes=list(self.notes),
            extra_columns=None
            if self.extra_columns is None
            else self.extra_columns.iloc[idx].reset_index(drop=True),
        )

    def shard(self, rank: int, world_size: int) -> np.ndarray:
        """Indices of this rank's contiguous share of the set (for distributed runs)."""
        bounds = np.linspace(0, len(self), world_size + 1).astype(np.int64)
        return np.arange(bounds[rank], bounds[rank + 1])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        *,
        rotations: np.ndarray | torch.Tensor | None = None,
        shifts_px: np.ndarray | torch.Tensor | None = None,
        ctf: CTFParams | None = None,
        pixel_size_angstrom: float,
        box_size: int,
        half_set: np.ndarray | None = None,
        class_number: np.ndarray | None = None,
        image_names: list[str] | None = None,
        images: np.ndarray | None = None,
        ctf_premultiplied: bool = False,
        datadir: str | os.PathLike | None = None,
    ) -> ParticleSet:
        """Build a set from arrays (simulated data, conversions).

        Parameters
        ----------
        rotations
            ``(n, 3, 3)`` RELION ``A`` or None.
        shifts_px
            ``(n, 2)`` origins in pixels or None.
        ctf
            :class:`CTFParams` of length ``n`` or None.
        pixel_size_angstrom, box_size
            One optics group with this pixel size and box.
        half_set, class_number
            ``(n,)`` ints or None.
        image_names
            ``NNNNNN@path`` names (relative to ``datadir`` or the working folder), or None.
        images
            ``(n, D, D)`` images held in memory, or None.
        ctf_premultiplied
            Whether the images are CTF-premultiplied.
        datadir
            Folder ``image_names`` are relative to (default: the working folder).

        The number of particles ``n`` is the length of the first array given.
        """
        arrays = {
            "rotations": _to_numpy(rotations),
            "shifts_px": _to_numpy(shifts_px),
        }
        ctf_table = None
        n = None
        if ctf is not None:
            ctf_table = ctf.as_tensor().detach().cpu().double().numpy().reshape(-1, 9)
        for candidate in (arrays["rotations"], arrays["shifts_px"], ctf_table, images, half_set):
            if n is None and candidate is not None:
                n = len(candidate)
        if n is None and image_names is not None:
            n = len(image_names)
        if n is None:
            raise ValueError("from_arrays needs at least one per-particle array")
        rot = arrays["rotations"]
        if rot is not None and rot.shape != (n, 3, 3):
            raise ValueError(f"rotations must be ({n}, 3, 3), got {rot.shape}")
        sh = arrays["shifts_px"]
        if sh is not None and sh.shape != (n, 2):
            raise ValueError(f"shifts_px must be ({n}, 2), got {sh.shape}")
        if ctf_table is not None and len(ctf_table) != n:
            raise ValueError(f"ctf has {len(ctf_table)} particles, expected {n}")
        stack_files: list[Path] = []
        stack_ids = stack_indices = None
        if image_names is not None:
            base = Path(datadir) if datadir is not None else Path.cwd()
            stack_files, stack_ids, stack_indices = parse_image_names(
                np.asarray(image_names, dtype=object), base, None, "<memory>"
            )
        return cls(
            path=None,
            box_size=int(box_size),
            pixel_size_angstrom=float(pixel_size_angstrom),
            rotations=None if rot is None else rot.astype(np.float64),
            shifts_px=None if sh is None else sh.astype(np.float64),
            ctf=ctf_table,
            ctf_premultiplied=np.full(n, bool(ctf_premultiplied)),
            optics_group=np.ones(n, dtype=np.int64),
            optics_groups=[
                OpticsGroup(1, "opticsGroup1", float(pixel_size_angstrom), int(box_size))
            ],
            half_set=None if half_set is None else np.asarray(half_set, dtype=np.int64),
            class_number=None if class_number is None else np.asarray(class_number, np.int64),
            stack_files=stack_files,
            stack_ids=stack_ids,
            stack_indices=stack_indices,
            image_array=None if images is None else np.asarray(images, dtype=np.float32),
        )

    # ------------------------------------------------------------------ summary
    def summary(self, *, check_images: bool = True) -> dict:
        """A JSON-ready description (used by ``cryograd info``)."""
        out: dict = {
            "file": str(self.path) if self.path is not None else None,
            "format": self.source_format,
            "particles": len(self),
            "box_size": self.box_size,
            "pixel_size_angstrom": self.pixel_size_angstrom,
            "optics_groups": [
                {
                    "number": g.number,
                    "name": g.name,
                    "pixel_size_angstrom": g.pixel_size_angstrom,
                    "box_size": g.box_size,
                    "particles": int(np.sum(self.optics_group == g.number)),
                }
                for g in self.optics_groups
            ],
            "poses": self.rotations is not None,
            "shifts": self.shifts_px is not None,
            "ctf": self.ctf is not None,
            "ctf_premultiplied": bool(np.any(self.ctf_premultiplied)),
            "half_sets": self.half_set is not None,
            "classes": None
            if self.class_number is None
            else int(len(np.unique(self.class_number))),
        }
        if self.ctf is not None and len(self):
            dfs = self.ctf[:, :2]
            out["defocus_range_angstrom"] = [float(dfs.min()), float(dfs.max())]
            out["voltages_kv"] = sorted({float(v) for v in np.unique(self.ctf[:, 3])})
        if self.half_set is not None:
            out["half_set_sizes"] = [
                int(np.sum(self.half_set == 1)),
                int(np.sum(self.half_set == 2)),
            ]
        if self.shifts_px is not None and len(self):
            out["max_abs_shift_px"] = float(np.abs(self.shifts_px).max())
        if self.image_array is not None:
            out["images"] = {"in_memory": True}
        else:
            used = np.unique(self.stack_ids[self.stack_ids >= 0])
            images: dict = {
                "with_image": int(np.sum(self.stack_ids >= 0)),
                "stack_files": int(len(used)),
            }
            if check_images:
                missing = self.check_images(missing_ok=True)
                missing_set = {str(p) for p in missing}
                missing_ids = [i for i, f in enumerate(self.stack_files) if str(f) in missing_set]
                images["missing_stack_files"] = len(missing)
                images["missing_examples"] = [str(p) for p in missing[:5]]
                images["particles_with_missing_image"] = int(
                    np.sum(np.isin(self.stack_ids, missing_ids))
                )
            out["images"] = images
        if self.notes:
            out["notes"] = list(self.notes)
        return out


# ---------------------------------------------------------------------- helpers
def _group_value(group: OpticsGroup, name: str, ctf_row, column: int, default: float) -> float:
    """An optics field of a group: from ``extra``, else its first particle's CTF row."""
    value = pd.to_numeric(pd.Series([group.extra.get(name)]), errors="coerce")[0]
    if np.isfinite(value):
        return float(value)
    return float(ctf_row[column]) if ctf_row is not None else default


def _to_numpy(a) -> np.ndarray | None:
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def resample_other_boxes(
    groups: list[OpticsGroup], particle_group: np.ndarray, shifts_px: np.ndarray | None
) -> None:
    """Give each group of another box than the first group's its sampling onto that box
    (:func:`cryograd.optics.rescale.group_sampling`, as RELION rescales to its first group), and
    convert those particles' ``shifts_px`` ``(n, 2)`` in place to the resampled images' pixels
    (origins in Å unchanged). ``particle_group`` ``(n,)`` holds each particle's group number."""
    ref = next((g for g in groups if g.box_size is not None), None)
    if ref is None or ref.box_size is None:
        return
    for g in groups:
        if g.box_size is None or g.box_size == ref.box_size:
            continue
        g.sampling = group_sampling(
            g.box_size, g.pixel_size_angstrom, ref.box_size, groups[0].pixel_size_angstrom
        )
        if shifts_px is not None:
            rows = particle_group == g.number
            shifts_px[rows] *= g.pixel_size_angstrom / g.sampling.image_pixel_angstrom


def _as_index(indices, n: int) -> np.ndarray:
    if isinstance(indices, slice):
        return np.arange(n)[indices]
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    idx = np.asarray(indices)
    if idx.dtype == bool:
        return np.nonzero(idx)[0]
    idx = np.atleast_1d(idx).astype(np.int64)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"particle index out of range for a set of {n}")
    return np.where(idx < 0, idx + n, idx)


def resolve_image_path(
    name: str, base: Path, datadir: Path | None, listing: _FolderListing | None = None
) -> Path:
    """Where an image file named in metadata lives.

    With ``datadir``: ``datadir/name``, else ``datadir/basename(name)``. Without: ``name``
    relative to ``base`` (the metadata file's folder) when that exists, else relative to the
    working folder.
    The first candidate is returned when none exists (so the error names it). ``listing``
    answers "is this a file" from one listing per folder (for many names at once).
    """
    join, absolute = os.path.join, os.path.isabs(name)
    if datadir is not None:
        other = join(datadir, os.path.basename(name))
        candidates = [name, other] if absolute else [join(datadir, name), other]
    else:
        candidates = [name] if absolute else [join(base, name), join(os.getcwd(), name)]
    is_file = listing.is_file if listing is not None else os.path.isfile
    for c in candidates:
        if is_file(c):
            return Path(c)
    return Path(candidates[0])


def resolve_image_paths(names: list[str], base: Path, datadir: Path | None) -> list[Path]:
    """:func:`resolve_image_path` of each of many names (the same paths).

    The candidates of a name are a prefix that depends only on the name's folder part, then its
    file name; so the prefixes and their folders' listings are found once per folder part, and
    each name costs a set look-up and a string join.
    """
    listing, cwd = _FolderListing(), os.getcwd()
    by_head: dict[str, list[tuple[str, frozenset[str]]]] = {}
    out = []
    for name in names:
        cut = name.rfind("/") + 1
        head, tail = name[:cut], name[cut:]
        prefixes = by_head.get(head)
        if prefixes is None:
            prefixes = by_head[head] = [
                (c, listing.files(os.path.split(c + "x")[0]))
                for c in _candidate_prefixes(head, base, datadir, cwd)
            ]
        found = next((c for c, files in prefixes if tail in files), prefixes[0][0])
        out.append(Path(found + tail))
    return out


def _candidate_prefixes(head: str, base: Path, datadir: Path | None, cwd: str) -> list[str]:
    """The candidates of :func:`resolve_image_path` for a name ``head + tail`` (``tail``
    without ``/``), less ``tail``: ``os.path.join(x, head + tail) == os.path.join(x, head) +
    tail`` for a relative name, and ``basename`` is ``tail``."""
    join = os.path.join
    if datadir is not None:
        other = join(datadir, "")
        return [head, other] if os.path.isabs(head) else [join(datadir, head), other]
    return [head] if os.path.isabs(head) else [join(base, head), join(cwd, head)]


class _FolderListing:
    """``Path.is_file`` for many paths, from one ``os.scandir`` per folder."""

    def __init__(self) -> None:
        self._files: dict[str, frozenset[str]] = {}

    def is_file(self, path: str) -> bool:
        folder, name = os.path.split(path)
        return name in self.files(folder)

    def files(self, folder: str) -> frozenset[str]:
        """The names of the files in ``folder`` (``''``: the working folder; none on error)."""
        folder = folder or "."
        if folder not in self._files:
            try:
                with os.scandir(folder) as entries:
                    self._files[folder] = frozenset(e.name for e in entries if e.is_file())
            except OSError:
                self._files[folder] = frozenset()
        return self._files[folder]


def _split_fixed_width(arr, at: int) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """:func:`_split_names_arrow` for names of one length (RELION's usual ``%06d@path``).

    The names are then a ``(n, length)`` byte matrix: the numbers are its digit columns, and
    each run of rows naming one file (consecutive in sorted files) is found by comparing a row
    with the one before. None when the names differ in length, the digits are not all digits,
    or there are many short runs (unsorted names: the caller's dictionary encoding is then
    as fast).
    """
    n = len(arr)
    offsets_buf, data_buf = arr.buffers()[1:3]
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[arr.offset : arr.offset + n + 1]
    width = int(offsets[1] - offsets[0])
    if width <= at + 1 or np.any(np.diff(offsets) != width):
        return None
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
    names = data.reshape(n, width)
    numbers, bad = np.zeros(n, np.int64), np.zeros(n, bool)
    for k in range(at):  # one digit column at a time: no (n, at) temporaries
        digit = names[:, k] - np.uint8(ord("0"))  # below '0' wraps past 9
        bad |= digit > 9
        numbers *= 10
        numbers += digit
    if bool(bad.any()) or (data.size and int(data.max()) >= 128):
        return None  # signs, spaces or non-ASCII: the general path
    files = names[:, at + 1 :]
    # each row's file part as one fixed-size item, compared with the row before
    items = np.ndarray((n,), f"V{width - at - 1}", data, at + 1, (width,))
    starts = np.flatnonzero(items[1:] != items[:-1]) + 1
    if len(starts) > n // 4:
        return None
    starts = np.concatenate(([0], starts))
    index: dict[bytes, int] = {}
    run_file = np.array([index.setdefault(files[k].tobytes(), len(index)) for k in starts])
    file_index = np.repeat(run_file, np.diff(np.append(starts, n)))
    return numbers, file_index, [f.decode("ascii") for f in index]


def _split_names_arrow(names: pd.Series) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(1-based numbers, file index, unique files) of ``NNNNNN@path`` names, by pyarrow.

    Only for the usual case: Arrow-backed strings with the ``@`` at the same place in every
    name and a number before it; None otherwise (the caller's general path then checks).
    """
    if pa is None or not isinstance(names.dtype, pd.StringDtype):
        return None
    if names.dtype.storage != "pyarrow":
        return None
    arr = pa.chunked_array(pa.array(names)).combine_chunks()
    if len(arr) == 0 or arr.null_count:
        return None
    at = pc.min_max(pc.find_substring(arr, "@")).as_py()
    if at["min"] != at["max"] or at["min"] <= 0:
        return None
    fixed = _split_fixed_width(arr, at["min"])
    if fixed is not None:
        return fixed
    try:
        numbers = pc.cast(pc.utf8_slice_codeunits(arr, 0, at["min"]), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    files = pc.utf8_slice_codeunits(arr, at["min"] + 1, np.iinfo(np.int32).max)
    encoded = pc.dictionary_encode(files)
    return (
        numbers.to_numpy(zero_copy_only=False),
        encoded.indices.to_numpy(zero_copy_only=False),
        encoded.dictionary.to_pylist(),
    )


def parse_image_names(
    names, base: Path, datadir: Path | None, source
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Split ``NNNNNN@path`` names into (unique resolved files, stack id (n,), 0-based index (n,)).

    ``names`` is a sequence or pandas Series of strings. A name without ``@`` is a single-image
    file (index 0). Vectorised with pandas string methods (Arrow-backed under pandas 3 when
    pyarrow is installed), so a million names take well under a second.
    """
    s = names if isinstance(names, pd.Series) else pd.Series(np.asarray(names, dtype=object))
    s = s.reset_index(drop=True)
    fast = _split_names_arrow(s)
    if fast is not None and fast[0].min() >= 1 and all(fast[2]):
        stack_files = resolve_image_paths(fast[2], base, datadir)
        return stack_files, fast[1].astype(np.int32), fast[0] - 1
    if pd.api.types.infer_dtype(s, skipna=False) != "string":
        s = s.astype(object).map(str)
    s = s.astype("str")
    at = s.str.find("@").to_numpy()
    numbers = None
    if len(at) and at[0] > 0 and bool(np.all(at == at[0])):
        # fast path: every name has its '@' at the same place (RELION's fixed-width numbers)
        files = s.str.slice(int(at[0]) + 1)
        digits = s.str.slice(0, int(at[0]))
        try:
            numbers = digits.astype("int64").to_numpy(dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            numbers = None  # something is not a number: the general path finds the row
    if numbers is None:
        s = s.str.strip()
        parts = s.str.partition("@")
        has_at = (parts[1] == "@").to_numpy(dtype=bool)
        files = parts[2].where(has_at, parts[0])
        numeric = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        bad_number = ~np.isfinite(numeric) | (numeric != np.round(numeric))
        numbers = np.where(bad_number, 0, numeric).astype(np.int64)
    else:
        bad_number = np.zeros(len(numbers), dtype=bool)
    bad = bad_number | (numbers < 1) | (files.str.len().to_numpy() == 0)
    if bool(bad.any()):
        row = int(np.argmax(bad))
        raise CryogradError(
            f"{source}: row {row + 1}: rlnImageName {str(s.iloc[row])!r} is not NNNNNN@path"
        )
    codes, uniques = pd.factorize(files)
    stack_files = resolve_image_paths([str(u) for u in uniques], base, datadir)
    return stack_files, codes.astype(np.int32), numbers - 1


def _release_pages(data: np.ndarray) -> None:
    """Drop the pages just read from a read-only memory-mapped stack from this process's
    resident memory (``MADV_DONTNEED``; they stay in the page cache, so a later read is cheap).
    Streaming a large stack then costs one batch of memory, not the whole file's pages."""
    mm = getattr(data, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mm is None or advice is None or getattr(data, "mode", "r") != "r":
        return
    try:
        mm.madvise(advice)
    except (OSError, ValueError, AttributeError):
        pass
