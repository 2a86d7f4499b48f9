"""Read CloudSat's ECMWF-AUX product: the ECMWF analysis state on every CPR bin of a granule.

Layout (``docs/cloudsat_cpr.md`` section 3, [DPC-EC], [DPC-EC4]): an HDF-EOS2 swath ``ECMWF-AUX``
with the granule's geolocation (``Latitude``, ``Longitude``, ``Profile_time``, ``UTC_start``), the
fixed 1-D ``EC_height`` (nbin, m above mean sea level, fill -9999) and 2-D ``Temperature`` (K),
``Specific_humidity`` (kg/kg), ``U_velocity`` and ``V_velocity`` (m/s), ``Pressure`` (Pa), fill
-999, factor 1, offset 0.  The fact sheet lists the 2-D fields as ``(nbin, nray)``; pyhdf reads
CloudSat SDS as ``(nray, nbin)``; both orders are accepted.

:func:`read_ecmwf_aux` returns dims ``(profile, bin)`` (bin 0 at the top, as in 2B-GEOPROF):
``temperature``, ``specific_humidity``, ``u``, ``v`` (NaN fill), ``ec_height`` (bin),
``latitude``, ``longitude``, ``time`` (profile) when the file has them, and the granule attributes
of :func:`bzpipe.sources.cloudsat.read_granule`.  :func:`check_companion` refuses an ECMWF-AUX
granule that does not belong to a 2B-GEOPROF one (another orbit, another profile count).

The product holds the operational ECMWF analysis, not ERA-5 (``cloudsat_cpr.md``: "It is not
ERA5"); the models are trained on ERA-5, so ``infer.atmosphere_sources`` decides which comes first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from bzpipe.errors import CorruptFileError, InputFileError, MissingVariableError
from bzpipe.sources.cloudsat.hdfeos import SwathFile
from bzpipe.sources.cloudsat.reader import _granule_fields, _iso, decode, profile_times

PRODUCT = "ECMWF-AUX"
#: product field -> (variable, units, long name)
STATE_FIELDS = {"Temperature": ("temperature", "K", "air temperature"),
                "Specific_humidity": ("specific_humidity", "kg kg-1", "specific humidity"),
                "U_velocity": ("u", "m s-1", "eastward wind"),
                "V_velocity": ("v", "m s-1", "northward wind")}


class CompanionMismatchError(InputFileError):
    """An ECMWF-AUX granule that does not belong to the 2B-GEOPROF granule it was paired with."""


def read_ecmwf_aux(path: str | Path, *, source: str | None = None) -> xr.Dataset:
    """Read an ECMWF-AUX granule from a local ``path`` (``source`` names it in errors and attrs).

    Raises :class:`MissingVariableError` (a state field or ``EC_height`` missing) and
    :class:`CorruptFileError` (shapes that do not fit), naming the file.
    """
    source = source or str(path)
    with SwathFile(path, source=source) as sw:
        info = _granule_fields(sw, source)
        for name in ("EC_height", *STATE_FIELDS):
            if not sw.has(name):
                raise MissingVariableError(source, f"no {name!r} field in swath {sw.swath_name!r} "
                                                   f"(an ECMWF-AUX granule is needed)")
        ech, bad = decode(sw.read("EC_height").ravel(), sw.field_attrs("EC_height"))
        nbin = ech.size
        data_vars: dict[str, tuple] = {"ec_height": ("bin", np.where(bad, np.nan, ech).astype(np.float32), {
            "units": "m", "long_name": "height of the ECMWF-AUX bin above mean sea level",
            "source_field": "EC_height"})}
        nray = None
        for field, (var, units, long_name) in STATE_FIELDS.items():
            raw = sw.read(field)
            if raw.ndim != 2 or nbin not in raw.shape:
                raise CorruptFileError(source, f"{field!r} has shape {raw.shape}; EC_height has {nbin} bins")
            if raw.shape[1] != nbin:            # stored (nbin, nray)
                raw = raw.T
            if nray is None:
                nray = raw.shape[0]
            elif raw.shape[0] != nray:
                raise CorruptFileError(source, f"{field!r} has {raw.shape[0]} profiles, expected {nray}")
            values, bad = decode(raw, sw.field_attrs(field))
            data_vars[var] = (("profile", "bin"), np.where(bad, np.nan, values).astype(np.float32), {
                "units": units, "long_name": long_name, "source_field": field})
        assert nray is not None
        for name, var, units in (("Latitude", "latitude", "degrees_north"),
                                 ("Longitude", "longitude", "degrees_east")):
            if sw.has(name):
                vals, bad = decode(sw.read(name), sw.field_attrs(name))
                if vals.shape == (nray,):
                    data_vars[var] = ("profile", np.where(bad, np.nan, vals).astype(np.float32),
                                      {"units": units})
        if sw.has("Profile_time") and (sw.has("UTC_start") or sw.has("TAI_start")):
            data_vars["time"] = ("profile", profile_times(sw, info["start"], nray, source))
        attrs = {"granule_id": info["granule_id"], "orbit": info["orbit"], "release": info["release"],
                 "product": info["product"], "start_time": _iso(info["start"]), "source_file": source}
        inside = sw.attributes.get("granule_number")
        if inside is not None:
            attrs["orbit_in_file"] = int(float(inside))
    return xr.Dataset(data_vars, coords={"profile": np.arange(nray), "bin": np.arange(nbin)}, attrs=attrs)


def check_companion(geoprof: xr.Dataset, aux: xr.Dataset) -> xr.Dataset:
    """Return ``aux`` when it is the ECMWF-AUX of the 2B-GEOPROF granule ``geoprof``: the same orbit
    (granule number), the same number of profiles and, when both carry them, the same first profile
    time (within 1 s).  Raises :class:`CompanionMismatchError` naming the ECMWF-AUX file and the reason.
    """
    src = aux.attrs.get("source_file", "<ECMWF-AUX granule>")
    g_orbit = geoprof.attrs.get("orbit")
    for what in ("orbit", "orbit_in_file"):          # the file name's and the file's own granule number
        a_orbit = aux.attrs.get(what)
        if a_orbit is not None and g_orbit is not None and int(a_orbit) != int(g_orbit):
            where = "" if what == "orbit" else " (its granule_number attribute)"
            raise CompanionMismatchError(src, f"ECMWF-AUX of orbit {int(a_orbit)}{where}, but the 2B-GEOPROF "
                                              f"granule {geoprof.attrs.get('granule_id', '')} is orbit "
                                              f"{int(g_orbit)}")
    n_g, n_a = geoprof.sizes.get("profile"), aux.sizes.get("profile")
    if n_g != n_a:
        raise CompanionMismatchError(src, f"ECMWF-AUX has {n_a} profiles, the 2B-GEOPROF granule "
                                          f"{geoprof.attrs.get('granule_id', '')} has {n_g}")
    if "time" in aux and "time" in geoprof and n_g:
        dt = abs(float((aux["time"].values[0] - geoprof["time"].values[0]) / np.timedelta64(1, "s")))
        if dt > 1.0:
            raise CompanionMismatchError(src, f"ECMWF-AUX starts {dt:.0f} s from the 2B-GEOPROF granule")
    return aux
