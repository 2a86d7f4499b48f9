"""Read-only access to a CloudSat HDF-EOS2 (HDF4) swath with pyhdf.

How CloudSat lays out a granule (checked on a real R05 2B-CLDCLASS file):

* a Vgroup of class ``SWATH`` named after the product (``2B-GEOPROF``) holds
  three Vgroups of class ``SWATH Vgroup``: ``Geolocation Fields``,
  ``Data Fields`` and ``Swath Attributes``;
* 2-D fields (``Height``, ``Radar_Reflectivity``, ``CPR_Cloud_mask``, ...) are
  SDS (tag ``DFTAG_NDG``) with dimensions ``nray:<swath>``, ``nbin:<swath>``
  and an SDS ``_FillValue`` attribute;
* 1-D and scalar fields (``Latitude``, ``Longitude``, ``Profile_time``,
  ``UTC_start``, ``TAI_start``, ``DEM_elevation``, ``Navigation_land_sea_flag``)
  are one-field Vdata (tag ``DFTAG_VH``), one record per profile;
* every field attribute is a one-record Vdata of class ``Attr0.0`` with the
  single field ``AttrValues`` in ``Swath Attributes``, named
  ``<field>.factor``, ``.offset``, ``.valid_range``, ``.missing``, ``.missop``,
  ``.units``, ``.long_name``, plus ``_FV_<field>`` (the HDF-EOS fill value),
  next to granule attributes (``granule_number``, ``start_time``,
  ``product_version``, ...);
* the SD global attribute ``StructMetadata.0`` describes the swath in ODL.

Everything pyhdf raises (``HDF4Error``, with texts like "SD (7): Error
opening file", but also ``ValueError("SDreaddata failure")`` when compressed
data no longer inflate, and whatever a damaged header makes it raise) is
turned into :class:`~bzpipe.errors.CorruptFileError` naming the file.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyhdf.V  # noqa: F401  (HDF.vgstart needs the submodule imported)
import pyhdf.VS  # noqa: F401  (HDF.vstart needs the submodule imported)
from pyhdf.error import HDF4Error
from pyhdf.HDF import HC, HDF
from pyhdf.SD import SD, SDC

from bzpipe.errors import CorruptFileError, InputFileError

#: The HDF4 C library is not thread-safe: every pyhdf session (reader or writer) holds this lock.
HDF4_LOCK = threading.RLock()

#: First four bytes of every HDF4 file.
HDF4_MAGIC = b"\x0e\x03\x13\x01"

SWATH_CLASS = "SWATH"
SWATH_GROUP_CLASS = "SWATH Vgroup"
GEO_GROUP = "Geolocation Fields"
DATA_GROUP = "Data Fields"
ATTR_GROUP = "Swath Attributes"
ATTR_VDATA_CLASS = "Attr0.0"
ATTR_FIELD = "AttrValues"

#: HDF4 number types (HC.*) -> numpy dtypes.
HDF_DTYPES: dict[int, np.dtype] = {
    HC.CHAR8: np.dtype("S1"), HC.UCHAR8: np.dtype("u1"), HC.INT8: np.dtype("i1"),
    HC.UINT8: np.dtype("u1"), HC.INT16: np.dtype("i2"), HC.UINT16: np.dtype("u2"),
    HC.INT32: np.dtype("i4"), HC.UINT32: np.dtype("u4"), HC.FLOAT32: np.dtype("f4"),
    HC.FLOAT64: np.dtype("f8"),
}


@dataclass(frozen=True)
class FieldRef:
    """Where a swath field lives: an SDS (``index`` in the SD interface) or a Vdata (``ref``)."""

    name: str
    kind: str  # "sds" or "vdata"
    group: str  # GEO_GROUP or DATA_GROUP
    key: int


@dataclass(frozen=True)
class FieldAttrs:
    """The CloudSat per-field attributes (science = (stored - offset) / factor)."""

    factor: float = 1.0
    offset: float = 0.0
    missing: float | None = None
    missop: str = "=="
    valid_range: tuple[float, float] | None = None
    fill: float | None = None
    units: str | None = None
    long_name: str | None = None


class SwathFile:
    """An open CloudSat HDF-EOS2 swath (read only). Use as a context manager.

    While open it holds :data:`HDF4_LOCK` (one pyhdf session per process at a time).

    ``fields`` maps field names to :class:`FieldRef`; ``attributes`` holds the
    swath attributes (``Swath Attributes`` Vdata) by name; ``global_attributes``
    the SD file attributes (``HDFEOSVersion``, ``StructMetadata.0``).
    """

    def __init__(self, path: str | Path, *, source: str | None = None) -> None:
        self.path = Path(path)
        self.source = source or str(path)
        self._sd: Any = None
        self._hdf: Any = None
        self._v: Any = None
        self._vs: Any = None
        self._locked = False
        _check_magic(self.path, self.source)
        HDF4_LOCK.acquire()
        self._locked = True
        try:
            self._sd = SD(str(self.path), SDC.READ)
            self._hdf = HDF(str(self.path), HC.READ)
            self._v = self._hdf.vgstart()
            self._vs = self._hdf.vstart()
            self.global_attributes: dict[str, Any] = {
                k: _strip(v) for k, v in self._sd.attributes().items()}
            self.swath_name, self.fields, attr_refs = self._walk()
            self.attributes: dict[str, Any] = {name: self._read_attr_vdata(ref)
                                               for name, ref in attr_refs.items()}
        except InputFileError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - any pyhdf failure means a damaged file
            self.close()
            raise CorruptFileError(self.source, f"cannot open as HDF4/HDF-EOS2 ({_why(exc)})") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> SwathFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for obj, meth in ((self._vs, "end"), (self._v, "end"), (self._hdf, "close"), (self._sd, "end")):
            if obj is not None:
                try:
                    getattr(obj, meth)()
                except HDF4Error:
                    pass
        self._sd = self._hdf = self._v = self._vs = None
        if self._locked:
            self._locked = False
            HDF4_LOCK.release()

    # ------------------------------------------------------------------ structure
    def _walk(self) -> tuple[str, dict[str, FieldRef], dict[str, int]]:
        swath_ref = None
        ref = -1
        while True:
            try:
                ref = self._v.getid(ref)
            except HDF4Error:
                break
            vg = self._v.attach(ref)
            try:
                if vg._class == SWATH_CLASS:
                    swath_ref, swath_name = ref, vg._name
                    break
            finally:
                vg.detach()
        if swath_ref is None:
            raise CorruptFileError(self.source, "no HDF-EOS2 swath (Vgroup of class 'SWATH') in the file")
        fields: dict[str, FieldRef] = {}
        attrs: dict[str, int] = {}
        swath = self._v.attach(swath_ref)
        try:
            children = [r for tag, r in swath.tagrefs() if tag == HC.DFTAG_VG]
        finally:
            swath.detach()
        for child_ref in children:
            child = self._v.attach(child_ref)
            try:
                group, members = child._name, child.tagrefs()
            finally:
                child.detach()
            for tag, r in members:
                if tag == HC.DFTAG_VH:
                    vd = self._vs.attach(r)
                    try:
                        name = vd._name
                    finally:
                        vd.detach()
                    if group == ATTR_GROUP:
                        attrs[name] = r
                    elif group in (GEO_GROUP, DATA_GROUP):
                        fields[name] = FieldRef(name, "vdata", group, r)
                elif tag == HC.DFTAG_NDG and group in (GEO_GROUP, DATA_GROUP):
                    index = self._sd.reftoindex(r)
                    sds = self._sd.select(index)
                    try:
                        name = sds.info()[0]
                    finally:
                        sds.endaccess()
                    fields[name] = FieldRef(name, "sds", group, index)
        return swath_name, fields, attrs

    def has(self, name: str) -> bool:
        return name in self.fields

    # ------------------------------------------------------------------ reading
    def read(self, name: str) -> np.ndarray:
        """The stored (raw, unscaled) values of a field: (nray, nbin) for an SDS, (nrec,) for a Vdata."""
        ref = self.fields.get(name)
        if ref is None:
            raise KeyError(name)
        try:
            if ref.kind == "sds":
                sds = self._sd.select(ref.key)
                try:
                    return np.asarray(sds.get())
                finally:
                    sds.endaccess()
            return self._read_vdata(ref.key)
        except InputFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - any pyhdf failure means a damaged file
            raise CorruptFileError(self.source, f"cannot read field {name!r} ({_why(exc)})") from None

    def shape(self, name: str) -> tuple[int, ...]:
        ref = self.fields[name]
        try:
            if ref.kind == "sds":
                sds = self._sd.select(ref.key)
                try:
                    dims = sds.info()[2]
                finally:
                    sds.endaccess()
                return tuple(int(d) for d in np.atleast_1d(dims))
            vd = self._vs.attach(ref.key)
            try:
                return (int(vd.inquire()[0]),)
            finally:
                vd.detach()
        except Exception as exc:  # noqa: BLE001 - any pyhdf failure means a damaged file
            raise CorruptFileError(self.source, f"cannot inquire field {name!r} ({_why(exc)})") from None

    def field_attrs(self, name: str) -> FieldAttrs:
        """CloudSat attributes of a field from ``Swath Attributes`` (SDS ``_FillValue`` as fallback fill)."""
        a = self.attributes
        fill = a.get(f"_FV_{name}")
        ref = self.fields.get(name)
        if fill is None and ref is not None and ref.kind == "sds":
            try:
                sds = self._sd.select(ref.key)
                try:
                    fill = sds.attributes().get("_FillValue")
                finally:
                    sds.endaccess()
            except Exception as exc:  # noqa: BLE001 - any pyhdf failure means a damaged file
                raise CorruptFileError(self.source,
                                       f"cannot read attributes of {name!r} ({_why(exc)})") from None
        vr = a.get(f"{name}.valid_range")
        valid_range = None
        if vr is not None:
            lo, hi = (float(x) for x in np.ravel(vr)[:2])
            valid_range = (lo, hi) if lo <= hi else None  # [0, -1]: "no range" in CloudSat files
        return FieldAttrs(
            factor=float(a.get(f"{name}.factor", 1.0)),
            offset=float(a.get(f"{name}.offset", 0.0)),
            missing=_scalar_or_none(a.get(f"{name}.missing")),
            missop=str(a.get(f"{name}.missop", "==")).strip() or "==",
            valid_range=valid_range,
            fill=_scalar_or_none(fill),
            units=_str_or_none(a.get(f"{name}.units")),
            long_name=_str_or_none(a.get(f"{name}.long_name")),
        )

    def struct_metadata(self) -> dict[str, Any] | None:
        """The parsed ``StructMetadata.0`` of the swath (see :func:`parse_struct_metadata`), or None."""
        text = self.global_attributes.get("StructMetadata.0")
        if not isinstance(text, str):
            return None
        return parse_struct_metadata(text).get(self.swath_name)

    # ------------------------------------------------------------------ internals
    def _read_vdata(self, ref: int) -> np.ndarray:
        vd = self._vs.attach(ref)
        try:
            nrec, _, _, _, _ = vd.inquire()
            (fname, ftype, order, *_), *rest = vd.fieldinfo()
            if rest:
                raise CorruptFileError(self.source,
                                       f"Vdata {vd._name!r} has {len(rest) + 1} fields, expected 1")
            dtype = HDF_DTYPES.get(ftype)
            if dtype is None:
                raise CorruptFileError(self.source, f"Vdata {vd._name!r} has unknown number type {ftype}")
            if nrec == 0:
                return np.zeros((0,) if order == 1 else (0, order), dtype=dtype)
            records = vd.read(nrec)
        finally:
            vd.detach()
        arr = np.asarray(records, dtype=dtype)
        return arr.reshape(nrec) if order == 1 else arr.reshape(nrec, order)

    def _read_attr_vdata(self, ref: int) -> Any:
        vd = self._vs.attach(ref)
        try:
            nrec = vd.inquire()[0]
            (_, ftype, order, *_), *_ = vd.fieldinfo()
            value = vd.read(1)[0][0] if nrec else None
        finally:
            vd.detach()
        if ftype == HC.CHAR8:
            if isinstance(value, (int, np.integer)):  # pyhdf returns a 1-char string as its code
                return chr(int(value))
            return _strip(value)
        if order > 1 and isinstance(value, (list, tuple)):
            return tuple(value)
        return value


def _check_magic(path: Path, source: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise InputFileError(source, "file does not exist") from None
    except OSError as exc:
        raise InputFileError(source, f"cannot open ({exc})") from None
    if head != HDF4_MAGIC:
        raise CorruptFileError(source, "not an HDF4 file (bad magic number; truncated, HTML error page "
                                       "or another format?)")


F = TypeVar("F", bound=Callable[..., Any])


def damage_is_corrupt(reader: F) -> F:
    """Decorator for a granule reader ``reader(path, ..., source=None)``: whatever a damaged file makes it
    raise besides the :class:`InputFileError` family (an overflow decoding a garbled time, a garbled
    attribute that is no number, ...) becomes :class:`CorruptFileError` naming the file."""

    @functools.wraps(reader)
    def wrapper(path: str | Path, *args: Any, **kw: Any) -> Any:
        try:
            return reader(path, *args, **kw)
        except InputFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - bytes the reader cannot make sense of
            raise CorruptFileError(kw.get("source") or str(path), f"cannot be decoded ({_why(exc)})") from exc

    return wrapper  # type: ignore[return-value]


def _why(exc: BaseException) -> str:
    """Pyhdf's message, with the class when it is not HDF4Error (e.g. ``ValueError: SDreaddata failure``)."""
    return str(exc) if isinstance(exc, HDF4Error) else f"{type(exc).__name__}: {exc}"


def _strip(value: Any) -> Any:
    return value.rstrip("\x00").strip() if isinstance(value, str) else value


def _scalar_or_none(value: Any) -> float | None:
    if value is None:
        return None
    arr = np.ravel(value)
    return float(arr[0]) if arr.size else None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------------- StructMetadata (ODL)
_ODL_LINE = re.compile(r"^\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*?)\s*$")


def parse_struct_metadata(text: str) -> dict[str, dict[str, Any]]:
    """The swaths described by an HDF-EOS2 ``StructMetadata.0`` ODL text.

    Returns ``{swath name: {"dimensions": {name: size}, "geo_fields": {name:
    {"type": DFNT_..., "dims": [...]}}, "data_fields": {...}}}``.  Only what
    CloudSat swaths use is parsed (no dimension maps, grids or points).
    """
    swaths: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    section = None
    obj: dict[str, str] = {}
    for raw in text.replace("\x00", "").splitlines():
        m = _ODL_LINE.match(raw)
        if m is None:
            continue
        key, value = m["key"], m["value"]
        if key == "GROUP" and value.startswith("SWATH_"):
            current = {"dimensions": {}, "geo_fields": {}, "data_fields": {}}
            section = None
        elif key == "SwathName" and current is not None:
            swaths[value.strip('"')] = current
        elif key == "GROUP" and current is not None:
            section = value
        elif key == "OBJECT":
            obj = {}
        elif key == "END_OBJECT" and current is not None:
            if section == "Dimension" and "DimensionName" in obj:
                current["dimensions"][obj["DimensionName"]] = int(obj.get("Size", "0"))
            elif section in ("GeoField", "DataField"):
                name = obj.get("GeoFieldName") or obj.get("DataFieldName")
                if name:
                    dims = [d.strip().strip('"') for d in obj.get("DimList", "()").strip("()").split(",")
                            if d.strip()]
                    target = current["geo_fields" if section == "GeoField" else "data_fields"]
                    target[name] = {"type": obj.get("DataType"), "dims": dims}
        elif key == "END_GROUP" and value.startswith("SWATH_"):
            current, section = None, None
        else:
            obj[key] = value.strip('"')
    return swaths
