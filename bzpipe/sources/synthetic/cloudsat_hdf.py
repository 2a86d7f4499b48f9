"""Write synthetic CloudSat 2B-GEOPROF and ECMWF-AUX granules in the real HDF-EOS2 (HDF4) layout, with pyhdf.

The file mirrors what the CloudSat DPC writes (checked against a real R05 granule), so
:func:`bzpipe.sources.cloudsat.read_granule` reads it with the same code as a real file:

* SDS ``Height`` (int16, fill -9999), ``CPR_Cloud_mask`` (int8, fill -9) and ``Radar_Reflectivity``
  (int16, hundredths of dBZ, fill -8888), dimensions ``nray:2B-GEOPROF`` x ``nbin:2B-GEOPROF``,
  SDS attribute ``_FillValue``;
* one-field Vdata ``Profile_time``, ``UTC_start``, ``TAI_start``, ``Latitude``, ``Longitude``,
  ``DEM_elevation``, ``Vertical_binsize``, ``Navigation_land_sea_flag``, ``SurfaceHeightBin``
  (int8, 1-based, fill -1 [ICARE]);
* ECMWF-AUX (:func:`write_ecmwf_aux_granule`, layout of [DPC-EC4] / [DPC-EC]): the same geolocation,
  the fixed 1-D ``EC_height`` (nbin) and float32 SDS ``Temperature``, ``Specific_humidity``,
  ``U_velocity``, ``V_velocity``, ``Pressure`` (nray x nbin, fill -999, factor 1, offset 0),
  ``Temperature_2m`` and ``Surface_pressure`` (nray);
* Vgroup ``2B-GEOPROF`` (class ``SWATH``) holding ``Geolocation Fields``, ``Data Fields`` and
  ``Swath Attributes`` (class ``SWATH Vgroup``); field attributes as ``Attr0.0`` Vdata
  ``<field>.factor|offset|units|long_name|valid_range|missing|missop`` and ``_FV_<field>``, granule
  attributes (``granule_number``, ``start_time``, ``end_time``, ``product_version``, ...);
* SD global attributes ``HDFEOSVersion`` and ``StructMetadata.0`` (ODL).

Not reproduced: the HDF-EOS library's own bookkeeping beyond the above and the 2B-GEOPROF fields the
pipeline does not use (Sigma-Zero, Gaseous_Attenuation, MODIS flags, ...).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyhdf.V  # noqa: F401  (HDF.vgstart needs the submodule imported)
import pyhdf.VS  # noqa: F401  (HDF.vstart needs the submodule imported)
from pyhdf.HDF import HC, HDF
from pyhdf.SD import SD, SDC

from bzpipe.sources.cloudsat.hdfeos import HDF4_LOCK
from bzpipe.sources.cloudsat.names import format_granule_name
from bzpipe.sources.cloudsat.tai import utc_to_tai93

PRODUCT = "2B-GEOPROF"
EC_PRODUCT = "ECMWF-AUX"
EC_FILL = -999.0  # ECMWF-AUX fill of every state field [DPC-EC4]
SURFACE_BIN_FILL = -1  # SurfaceHeightBin fill [ICARE]
NBIN = 125
BIN_SPACING_M = 239.83  # CloudSat CPR range-bin size (m), as in the real Vertical_binsize

REFLECTIVITY_FACTOR = 100.0
REFLECTIVITY_FILL = -8888
REFLECTIVITY_VALID = (-4000, 5000)  # stored units: -40 .. 50 dBZ
HEIGHT_FILL = -9999
CLOUD_MASK_FILL = -9
DEM_OCEAN = -9999
DEM_MISSING = 9999
LAND_SEA_OCEAN = 2
_SCALARS = frozenset({"UTC_start", "TAI_start", "Vertical_binsize"})  # DimList ("scalar")

_DFNT = {HC.INT8: "DFNT_INT8", HC.UINT8: "DFNT_UINT8", HC.INT16: "DFNT_INT16",
         HC.FLOAT32: "DFNT_FLOAT32", HC.FLOAT64: "DFNT_FLOAT64"}
_NP = {HC.INT8: np.int8, HC.UINT8: np.uint8, HC.INT16: np.int16, HC.FLOAT32: np.float32,
       HC.FLOAT64: np.float64}
_SDC = {HC.INT8: SDC.INT8, HC.UINT8: SDC.UINT8, HC.INT16: SDC.INT16, HC.FLOAT32: SDC.FLOAT32,
        HC.FLOAT64: SDC.FLOAT64}


@dataclass
class _Field:
    """One swath field: stored values plus the CloudSat attributes written for it."""

    name: str
    group: str  # "geo" or "data"
    hdf_type: int
    values: np.ndarray
    long_name: str
    units: str | None
    valid_range: tuple[float, float] | None
    fill: float | None = None
    missing: float | None = None
    factor: float = 1.0
    compress: bool = False
    dim: str | None = None  # DimList of a 1-D field (default "nray", or "scalar")

    @property
    def is_sds(self) -> bool:
        return self.values.ndim == 2


def granule_file_name(start: datetime, granule_number: int, product: str = PRODUCT,
                      release: str = "R05", epoch: str = "E08", version: str | None = "F03",
                      iteration: str | None = None) -> str:
    """``YYYYDDDHHMMSS_NNNNN_CS_<product>_GRANULE_P1_<release>_<epoch>_<version>.hdf``.

    ``version`` is the R05 fix number; ``None`` gives an R04-style name
    (``..._GRANULE_P_R04_E06.hdf``). ``iteration`` defaults to ``P1`` (``P`` for R04); ECMWF-AUX
    R05 uses ``P``. Naive ``start`` is UTC.
    """
    iteration = iteration or ("P1" if version else "P")
    return format_granule_name(start, granule_number, product, release=release, epoch=epoch,
                               fix=version, iteration=iteration)


def write_geoprof_granule(path: Path, *, reflectivity_dbz: np.ndarray, height_m: np.ndarray,
                          cloud_mask: np.ndarray, latitude: np.ndarray, longitude: np.ndarray,
                          profile_time_s: np.ndarray, start: datetime, dem_elevation_m: np.ndarray,
                          land_sea_flag: np.ndarray, granule_number: int, release: str = "R05",
                          epoch: str = "E08", version: str | None = "F03",
                          surface_height_bin: np.ndarray | None = None) -> Path:
    """Write one 2B-GEOPROF granule into the folder ``path``; return the file's path.

    Shapes: ``reflectivity_dbz``, ``height_m``, ``cloud_mask`` ``(profile, bin)`` with bin 0 at the top
    (125 bins of ~240 m in the real product; any count is accepted); ``latitude``, ``longitude`` (degrees),
    ``profile_time_s`` (seconds since ``start``, increasing), ``dem_elevation_m`` (m MSL), ``land_sea_flag``
    (1 land, 2 ocean, 3 coast) ``(profile,)``; ``surface_height_bin`` (optional, ``(profile,)``) the
    0-based index of the surface bin (-1 = none), written 1-based as the product stores it.

    Packing as in the product: reflectivity is stored as int16 hundredths of dBZ (NaN -> -8888; values
    outside -40..50 dBZ are stored but read back as NaN, being outside ``valid_range``); heights as int16 m
    (NaN -> -9999); DEM as int16 m, -9999 over ocean (``land_sea_flag == 2`` and elevation <= 0) and 9999
    where NaN. The file name is chosen from ``start`` and ``granule_number`` (:func:`granule_file_name`);
    the file is written under a temporary name in ``path`` and renamed, so it appears complete or not at all.
    """
    refl = np.asarray(reflectivity_dbz, dtype=np.float64)
    if refl.ndim != 2 or refl.shape[0] < 1 or refl.shape[1] < 1:
        raise ValueError(f"reflectivity_dbz must be (profile, bin), got shape {refl.shape}")
    nray, nbin = refl.shape
    arrays2d = {"height_m": np.asarray(height_m, dtype=np.float64), "cloud_mask": np.asarray(cloud_mask)}
    arrays1d = {"latitude": np.asarray(latitude, dtype=np.float64),
                "longitude": np.asarray(longitude, dtype=np.float64),
                "profile_time_s": np.asarray(profile_time_s, dtype=np.float64),
                "dem_elevation_m": np.asarray(dem_elevation_m, dtype=np.float64),
                "land_sea_flag": np.asarray(land_sea_flag)}
    if surface_height_bin is not None:
        arrays1d["surface_height_bin"] = np.asarray(surface_height_bin)
    _check_shapes(nray, nbin, arrays2d, arrays1d)
    start = _utc(start)
    fields = _geoprof_fields(refl, arrays2d, arrays1d, start)
    return _write_granule(Path(path), PRODUCT, fields, start, float(arrays1d["profile_time_s"][-1]),
                          nray, nbin, granule_number, release, epoch, version, "P1" if version else "P")


def write_ecmwf_aux_granule(path: Path, *, ec_height_m: np.ndarray, temperature_k: np.ndarray,
                            specific_humidity: np.ndarray, u_m_s: np.ndarray, v_m_s: np.ndarray,
                            pressure_pa: np.ndarray, latitude: np.ndarray, longitude: np.ndarray,
                            profile_time_s: np.ndarray, start: datetime, granule_number: int,
                            release: str = "R05", epoch: str = "E08", version: str | None = "F03") -> Path:
    """Write one ECMWF-AUX granule (``..._CS_ECMWF-AUX_GRANULE_P_R05_...``) into the folder ``path``.

    ``ec_height_m`` (nbin,) the fixed bin heights (m MSL, bin 0 at the top); the state fields
    ``(profile, bin)`` in K, kg kg-1, m s-1, m s-1, Pa (NaN -> fill -999); geolocation as in
    :func:`write_geoprof_granule`.  ``Temperature_2m`` and ``Surface_pressure`` are written as the
    values of each profile's lowest bin with data (a stand-in: the generator has no 2 m level).
    """
    t = np.asarray(temperature_k, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"temperature_k must be (profile, bin), got shape {t.shape}")
    nray, nbin = t.shape
    arrays2d = {"temperature_k": t, "specific_humidity": np.asarray(specific_humidity, np.float64),
                "u_m_s": np.asarray(u_m_s, np.float64), "v_m_s": np.asarray(v_m_s, np.float64),
                "pressure_pa": np.asarray(pressure_pa, np.float64)}
    arrays1d = {"latitude": np.asarray(latitude, np.float64), "longitude": np.asarray(longitude, np.float64),
                "profile_time_s": np.asarray(profile_time_s, np.float64)}
    _check_shapes(nray, nbin, arrays2d, arrays1d)
    ech = np.asarray(ec_height_m, np.float64)
    if ech.shape != (nbin,):
        raise ValueError(f"ec_height_m must have shape {(nbin,)}, got {ech.shape}")
    start = _utc(start)

    def f32(x: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(x), x, EC_FILL).astype(np.float32)

    def lowest(x: np.ndarray) -> np.ndarray:
        ok = np.isfinite(x)
        j = nbin - 1 - np.argmax(ok[:, ::-1], axis=1)
        return np.where(ok.any(axis=1), x[np.arange(nray), j], np.nan)

    fields = _geolocation(arrays1d, start) + [
        _Field("EC_height", "geo", HC.INT16, np.where(np.isfinite(ech), np.round(ech), HEIGHT_FILL)
               .astype(np.int16), "Height of the ECMWF-AUX bins above mean sea level", "m", (-5000, 30000),
               fill=HEIGHT_FILL, missing=HEIGHT_FILL, dim="nbin"),
    ]
    for name, key, long_name, units in (
            ("Temperature", "temperature_k", "Temperature", "K"),
            ("Specific_humidity", "specific_humidity", "Specific humidity", "kg/kg"),
            ("U_velocity", "u_m_s", "U component of the wind", "m/s"),
            ("V_velocity", "v_m_s", "V component of the wind", "m/s"),
            ("Pressure", "pressure_pa", "Atmospheric pressure", "Pa")):
        fields.append(_Field(name, "data", HC.FLOAT32, f32(arrays2d[key]), long_name, units, None,
                             fill=EC_FILL, missing=EC_FILL, compress=True))
    fields += [_Field("Temperature_2m", "data", HC.FLOAT32, f32(lowest(t)), "Temperature at 2 m", "K", None,
                      fill=EC_FILL, missing=EC_FILL),
               _Field("Surface_pressure", "data", HC.FLOAT32, f32(lowest(arrays2d["pressure_pa"])),
                      "Surface pressure", "Pa", None, fill=EC_FILL, missing=EC_FILL)]
    return _write_granule(Path(path), EC_PRODUCT, fields, start, float(arrays1d["profile_time_s"][-1]),
                          nray, nbin, granule_number, release, epoch, version, "P")


def _check_shapes(nray: int, nbin: int, arrays2d: dict[str, np.ndarray],
                  arrays1d: dict[str, np.ndarray]) -> None:
    for name, arr in arrays2d.items():
        if arr.shape != (nray, nbin):
            raise ValueError(f"{name} must have shape {(nray, nbin)}, got {arr.shape}")
    for name, arr in arrays1d.items():
        if arr.shape != (nray,):
            raise ValueError(f"{name} must have shape {(nray,)}, got {arr.shape}")


def _utc(start: datetime) -> datetime:
    return (start if start.tzinfo is not None else start.replace(tzinfo=UTC)).astimezone(UTC)


def _write_granule(folder: Path, product: str, fields: list[_Field], start: datetime, span_s: float,
                   nray: int, nbin: int, granule_number: int, release: str, epoch: str, version: str | None,
                   iteration: str) -> Path:
    """Write the fields as one granule of ``product`` under its CloudSat name, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    name = granule_file_name(start, granule_number, product, release, epoch, version, iteration)
    end = start + timedelta(seconds=span_s)
    swath_attrs: list[tuple[str, Any, int]] = [
        ("granule_number", float(granule_number), HC.FLOAT32),
        ("ID_SITE", "bzpipe synthetic granule", HC.CHAR8),
        ("ID_CENTER", "bzpipe", HC.CHAR8),
        ("algorithm_name", product, HC.CHAR8),
        ("algorithm_version", f"{iteration}_{release}.0", HC.CHAR8),
        ("product_version", f"{iteration}_{release}", HC.CHAR8),
        ("start_time", f"{start:%Y%m%d%H%M%S}", HC.CHAR8),
        ("end_time", f"{end:%Y%m%d%H%M%S}", HC.CHAR8),
    ]
    target = folder / name
    # The temporary file keeps the real name (HDF4 records it in the SD's CDF0.0 Vgroup)
    # inside a hidden folder beside the target, so the rename stays on one file system.
    tmp_dir = folder / f".tmp-{uuid.uuid4().hex}"
    tmp_dir.mkdir()
    tmp = tmp_dir / name
    try:
        with HDF4_LOCK:  # the HDF4 C library is not thread-safe
            _write(tmp, product, fields, swath_attrs, nray, nbin)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp_dir.rmdir()
    return target


# ---------------------------------------------------------------------- packing
def _pack_int(x: np.ndarray, fill: int, dtype: type, factor: float = 1.0) -> np.ndarray:
    info = np.iinfo(dtype)
    scaled = np.clip(np.round(x * factor), info.min, info.max)
    return np.where(np.isfinite(x), scaled, fill).astype(dtype)


def _geolocation(a1: dict[str, np.ndarray], start: datetime) -> list[_Field]:
    seconds_of_day = (start - start.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds()
    return [
        _Field("Profile_time", "geo", HC.FLOAT32, a1["profile_time_s"].astype(np.float32),
               "Seconds since the start of the granule.", "seconds", (0.0, 6000.0)),
        _Field("UTC_start", "geo", HC.FLOAT32, np.array([seconds_of_day], np.float32),
               "UTC seconds since 00:00 Z of the first profile", "seconds", (0.0, 86400.0)),
        _Field("TAI_start", "geo", HC.FLOAT64, np.array([utc_to_tai93(start)], np.float64),
               "TAI time for the first profile.", "seconds", (0.0, 600000000.0)),
        _Field("Latitude", "geo", HC.FLOAT32, a1["latitude"].astype(np.float32),
               "Spacecraft Latitude", "degrees", (-90.0, 90.0)),
        _Field("Longitude", "geo", HC.FLOAT32, a1["longitude"].astype(np.float32),
               "Spacecraft Longitude", "degrees", (-180.0, 180.0)),
    ]


def _geoprof_fields(refl: np.ndarray, a2: dict[str, np.ndarray], a1: dict[str, np.ndarray],
                    start: datetime) -> list[_Field]:
    dem = a1["dem_elevation_m"]
    lsf = a1["land_sea_flag"].astype(np.uint8)
    dem_stored = _pack_int(dem, DEM_MISSING, np.int16)
    dem_stored = np.where((lsf == LAND_SEA_OCEAN) & np.isfinite(dem) & (dem <= 0), DEM_OCEAN,
                          dem_stored).astype(np.int16)
    mask = np.asarray(a2["cloud_mask"])
    mask = np.where(np.isfinite(mask.astype(np.float64)), mask, CLOUD_MASK_FILL).astype(np.int8)
    geo = _geolocation(a1, start) + [
        _Field("Height", "geo", HC.INT16, _pack_int(a2["height_m"], HEIGHT_FILL, np.int16),
               "Height of range bin in Reflectivity/Cloud Mask above reference surface (~ mean sea level).",
               "m", (-5000, 30000), fill=HEIGHT_FILL, missing=HEIGHT_FILL),
        _Field("DEM_elevation", "geo", HC.INT16, dem_stored, "Digital Elevation Map", "meters",
               (-9999, 8850), fill=DEM_MISSING, missing=DEM_MISSING),
        _Field("Vertical_binsize", "geo", HC.FLOAT32, np.array([BIN_SPACING_M], np.float32),
               "Vertical bin size", "m", None, missing=-9999.0),
    ]
    data = [
        _Field("Navigation_land_sea_flag", "data", HC.UINT8, lsf, "Land Sea Flag", "--", (1, 4)),
        _Field("CPR_Cloud_mask", "data", HC.INT8, mask, "CPR Cloud Mask", "--", (0, 40),
               fill=CLOUD_MASK_FILL, missing=CLOUD_MASK_FILL, compress=True),
        _Field("Radar_Reflectivity", "data", HC.INT16,
               _pack_int(refl, REFLECTIVITY_FILL, np.int16, REFLECTIVITY_FACTOR),
               "Radar Reflectivity Factor", "dBZe", REFLECTIVITY_VALID, fill=REFLECTIVITY_FILL,
               missing=REFLECTIVITY_FILL, factor=REFLECTIVITY_FACTOR, compress=True),
    ]
    if "surface_height_bin" in a1:
        sb = np.asarray(a1["surface_height_bin"], dtype=np.int64)
        stored = np.where((sb >= 0) & (sb < refl.shape[1]), sb + 1, SURFACE_BIN_FILL).astype(np.int8)
        data.append(_Field("SurfaceHeightBin", "data", HC.INT8, stored, "Surface Height Bin", "--",
                           (1, refl.shape[1]), fill=SURFACE_BIN_FILL, missing=SURFACE_BIN_FILL))
    return geo + data


# ---------------------------------------------------------------------- HDF writing
def _write(tmp: Path, product: str, fields: list[_Field], swath_attrs: list[tuple[str, Any, int]],
           nray: int, nbin: int) -> None:
    sds_refs: dict[str, int] = {}
    sd = SD(str(tmp), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    try:
        _set_global(sd, "HDFEOSVersion", "HDFEOS_V2.5")
        _set_global(sd, "StructMetadata.0", struct_metadata(product, nray, nbin, fields))
        for f in fields:
            if not f.is_sds:
                continue
            sds = sd.create(f.name, _SDC[f.hdf_type], f.values.shape)
            try:
                for i, dim in enumerate(("nray", "nbin")):
                    sds.dim(i).setname(f"{dim}:{product}")
                if f.fill is not None:
                    sds.setfillvalue(_NP[f.hdf_type](f.fill).item())
                if f.compress:
                    sds.setcompress(SDC.COMP_DEFLATE, 4)
                sds[:] = f.values
                sds_refs[f.name] = sds.ref()
            finally:
                sds.endaccess()
    finally:
        sd.end()

    hdf = HDF(str(tmp), HC.WRITE)
    v, vs = hdf.vgstart(), hdf.vstart()
    try:
        with _vgroup(v, product, "SWATH") as swath:
            groups = {}
            for key, gname in (("geo", "Geolocation Fields"), ("data", "Data Fields"),
                               ("attrs", "Swath Attributes")):
                vg = v.create(gname)
                vg._class = "SWATH Vgroup"
                swath.insert(vg)
                groups[key] = vg
            try:
                for f in fields:
                    if f.is_sds:
                        groups[f.group].add(HC.DFTAG_NDG, sds_refs[f.name])
                    else:
                        groups[f.group].add(HC.DFTAG_VH, _vdata(vs, f.name, f.name, f.hdf_type, f.values, ""))
                attrs = groups["attrs"]
                for aname, value, atype in swath_attrs:
                    attrs.add(HC.DFTAG_VH, _attr(vs, aname, value, atype))
                for f in fields:
                    for aname, value, atype in _field_attrs(f):
                        attrs.add(HC.DFTAG_VH, _attr(vs, aname, value, atype))
            finally:
                for vg in groups.values():
                    vg.detach()
    finally:
        vs.end()
        v.end()
        hdf.close()


def _field_attrs(f: _Field) -> list[tuple[str, Any, int]]:
    """The ``Attr0.0`` Vdata of one field, in the order the DPC writes them."""
    out: list[tuple[str, Any, int]] = []
    if f.fill is not None:
        out.append((f"_FV_{f.name}", f.fill, f.hdf_type))
    out += [(f"{f.name}.factor", f.factor, HC.FLOAT32), (f"{f.name}.offset", 0.0, HC.FLOAT32),
            (f"{f.name}.long_name", f.long_name, HC.CHAR8)]
    if f.units:
        out.append((f"{f.name}.units", f.units, HC.CHAR8))
    if f.valid_range is not None:
        out.append((f"{f.name}.valid_range", f.valid_range, f.hdf_type))
    if f.missing is not None:
        out += [(f"{f.name}.missing", f.missing, f.hdf_type), (f"{f.name}.missop", "==", HC.CHAR8)]
    return out


def _attr(vs: Any, name: str, value: Any, hdf_type: int) -> int:
    return _vdata(vs, name, "AttrValues", hdf_type, value, "Attr0.0")


def _vdata(vs: Any, name: str, field: str, hdf_type: int, values: Any, vclass: str) -> int:
    """Write a one-field Vdata (one record per element of 1-D ``values``; a tuple
    or string is ONE record of that order); return its reference number."""
    if isinstance(values, str) and len(values) == 1:
        order, records = 1, [[ord(values)]]  # pyhdf takes a 1-char CHAR8 field as its code
    elif isinstance(values, str):
        order, records = len(values), [[values]]
    elif isinstance(values, tuple):
        order, records = len(values), [[[_NP[hdf_type](x).item() for x in values]]]
    elif isinstance(values, np.ndarray):
        order, records = 1, [[x] for x in values.astype(_NP[hdf_type]).tolist()]
    else:
        order, records = 1, [[_NP[hdf_type](values).item()]]
    vd = vs.create(name, [(field, hdf_type, order)])
    try:
        if vclass:
            vd._class = vclass
        vd.write(records)
        return vd._refnum
    finally:
        vd.detach()


@contextlib.contextmanager
def _vgroup(v: Any, name: str, vclass: str) -> Iterator[Any]:
    vg = v.create(name)
    vg._class = vclass
    try:
        yield vg
    finally:
        vg.detach()


def _set_global(sd: Any, name: str, text: str) -> None:
    sd.attr(name).set(SDC.CHAR8, text)


def struct_metadata(swath: str, nray: int, nbin: int, fields: list[_Field]) -> str:
    """The ``StructMetadata.0`` ODL text HDF-EOS2 writes for a swath of these fields."""
    lines = ["GROUP=SwathStructure", "\tGROUP=SWATH_1", f'\t\tSwathName="{swath}"', "\t\tGROUP=Dimension"]
    for i, (dim, size) in enumerate((("nray", nray), ("scalar", 1), ("nbin", nbin)), 1):
        lines += [f"\t\t\tOBJECT=Dimension_{i}", f'\t\t\t\tDimensionName="{dim}"', f"\t\t\t\tSize={size}",
                  f"\t\t\tEND_OBJECT=Dimension_{i}"]
    lines += ["\t\tEND_GROUP=Dimension", "\t\tGROUP=DimensionMap", "\t\tEND_GROUP=DimensionMap",
              "\t\tGROUP=IndexDimensionMap", "\t\tEND_GROUP=IndexDimensionMap"]
    for group, kind in (("GeoField", "geo"), ("DataField", "data")):
        lines.append(f"\t\tGROUP={group}")
        for i, f in enumerate((f for f in fields if f.group == kind), 1):
            if f.is_sds:
                dims = '"nray","nbin"'
            else:
                dims = (f'"{f.dim}"' if f.dim else
                        '"nray"' if f.values.shape[0] == nray and f.name not in _SCALARS else '"scalar"')
            lines += [f"\t\t\tOBJECT={group}_{i}", f'\t\t\t\t{group}Name="{f.name}"',
                      f"\t\t\t\tDataType={_DFNT[f.hdf_type]}", f"\t\t\t\tDimList=({dims})"]
            if f.compress:
                lines += ["\t\t\t\tCompressionType=HDFE_COMP_DEFLATE", "\t\t\t\tDeflateLevel=4"]
            lines.append(f"\t\t\tEND_OBJECT={group}_{i}")
        lines.append(f"\t\tEND_GROUP={group}")
    lines += ["\t\tGROUP=MergedFields", "\t\tEND_GROUP=MergedFields", "\tEND_GROUP=SWATH_1",
              "END_GROUP=SwathStructure", "GROUP=GridStructure", "END_GROUP=GridStructure",
              "GROUP=PointStructure", "END_GROUP=PointStructure", "END", ""]
    return "\n".join(lines)

