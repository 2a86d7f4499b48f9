"""CF-1.10 metadata of a filled granule, and its export to compressed netCDF-4.

:func:`cf_decorate` gives every variable of :func:`bzpipe.infer.fill.fill_granule`'s output a
``long_name`` and ``units`` (``standard_name`` where the CF table has one:
``equivalent_reflectivity_factor`` for the reflectivities, ``altitude``, ``surface_altitude``,
``height``, ``time``, ``latitude``, ``longitude``), ``flag_values`` / ``flag_meanings`` on every
flag (in the flag's own type), makes ``time``, ``latitude``, ``longitude`` (per profile) and
``cpr_height`` (per bin) coordinates, and sets the global attributes ``Conventions``, ``title``,
``institution``, ``source``, ``history`` and ``references`` (with the paper's DOI).

:func:`export_netcdf` writes an output (a Zarr store or a Dataset) as netCDF-4 with zlib
compression, so netCDF-Java tools (Panoply, ncWMS) and netCDF4-python open it: ``bzpipe export``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from bzpipe.infer.state import DOMAIN_MEANINGS, SOURCE_MEANINGS

PAPER_DOI = "10.1175/AIES-D-23-0063.1"
REFERENCES = f"King et al. (2024), Artificial Intelligence for the Earth Systems, https://doi.org/{PAPER_DOI}"
EQ_REFL = "equivalent_reflectivity_factor"
FILL_STATUS_MEANINGS = ("filled filled_by_radar_only_model filled_out_of_domain "
                        "not_filled_no_atmospheric_state not_filled_out_of_domain "
                        "not_filled_invalid_geometry")

#: name -> attributes (flags: ``flag_meanings`` implies ``flag_values`` 0..n-1)
VARIABLES: dict[str, dict[str, Any]] = {
    "reflectivity_observed": {"standard_name": EQ_REFL, "units": "dBZ", "long_name":
                              "CPR radar reflectivity as read from the granule (incl. noise and clutter)"},
    "reflectivity_filled": {"standard_name": EQ_REFL, "units": "dBZ", "long_name":
                            "CPR reflectivity with the clutter-flagged bins replaced by the model's "
                            "prediction",
                            "comment": "NaN: no echo; in a bin with blind_zone_flag 1 and filled_flag 0: not "
                                       "filled (see fill_status)",
                            "ancillary_variables": "filled_flag blind_zone_flag reflectivity_std"},
    "reflectivity_std": {"units": "dB", "long_name": "MC-dropout spread of the filled reflectivity"},
    "filled_flag": {"long_name": "bin filled by the model", "flag_meanings": "not_filled filled"},
    "blind_zone_flag": {"long_name": "bin within the surface-clutter blind zone",
                        "flag_meanings": "above_blind_zone surface_clutter_blind_zone"},
    "cpr_height": {"standard_name": "altitude", "units": "m", "positive": "up",
                   "long_name": "height of the CPR bin centre above mean sea level"},
    "grid_observed": {"standard_name": EQ_REFL, "units": "dBZ", "long_name":
                      "observed echo on the model grid (NaN: no echo or not observed)"},
    "mc_mean": {"standard_name": EQ_REFL, "units": "dBZ", "long_name":
                "observation above the hidden rows, MC-dropout mean inside them"},
    "mc_std": {"units": "dB", "long_name": "MC-dropout spread (0 above the hidden rows)"},
    "mc_quantiles": {"standard_name": EQ_REFL, "units": "dBZ", "long_name": "MC-dropout quantiles"},
    "grid_filled_flag": {"long_name": "model row predicted", "flag_meanings": "observed predicted"},
    "ground_height": {"standard_name": "surface_altitude", "units": "m",
                      "long_name": "ground height above mean sea level under the profile"},
    "surface_bin": {"units": "1", "long_name": "index of the CPR bin holding the surface (0-based; -1 none)"},
    "surface_source": {"long_name": "where the surface bin comes from",
                       "flag_meanings": "none surface_height_bin dem"},
    "clutter_depth": {"units": "m", "long_name": "clutter depth above the surface applied to the profile"},
    "hidden_rows": {"units": "1", "long_name": "model rows hidden from the model and predicted"},
    "profile_valid": {"long_name": "profile has valid geometry", "flag_meanings": "invalid_geometry valid"},
    "atmosphere_source": {"long_name": "source of the atmospheric state fed to the model",
                          "flag_meanings": SOURCE_MEANINGS},
    "out_of_domain": {"long_name": "profile outside the model's training domain",
                      "flag_meanings": DOMAIN_MEANINGS},
    "fill_status": {"long_name": "whether and how the profile's blind zone was filled",
                    "flag_meanings": FILL_STATUS_MEANINGS},
    "resolution_mismatch": {"long_name": "model trained at KaZR resolution applied to CPR profiles",
                            "flag_meanings": ("model_trained_at_cpr_resolution "
                                              "model_trained_at_kazr_resolution")},
    "surface_air_temperature": {"standard_name": "air_temperature", "units": "K",
                                "long_name": ("air temperature of the lowest model row from the "
                                              "atmospheric state")},
}
COORDINATES: dict[str, dict[str, Any]] = {
    "time": {"standard_name": "time", "long_name": "time of the profile (UTC)", "axis": "T"},
    "latitude": {"standard_name": "latitude", "units": "degrees_north", "long_name": "latitude"},
    "longitude": {"standard_name": "longitude", "units": "degrees_east", "long_name": "longitude"},
    "height": {"standard_name": "height", "units": "m", "positive": "up", "axis": "Z",
               "long_name": "model row centre above ground"},
    "profile": {"units": "1", "long_name": "profile index in the granule"},
    "bin": {"units": "1", "long_name": "CPR range bin (0 = top of the profile)"},
    "quantile": {"units": "1", "long_name": "quantile level of the MC-dropout ensemble"},
}


def cf_decorate(ds: xr.Dataset, *, granule_id: str, model_id: str, source: str, history: str = "",
                code_version: str = "") -> xr.Dataset:
    """``ds`` with CF attributes on every variable and coordinate and the global attributes (module doc)."""
    coords = [c for c in ("time", "latitude", "longitude", "cpr_height") if c in ds.data_vars]
    ds = ds.set_coords(coords)
    for name, attrs in {**VARIABLES, **COORDINATES}.items():
        if name not in ds.variables:
            continue
        v = ds[name]
        a = dict(attrs)
        if "flag_meanings" in a:
            a["flag_values"] = np.arange(len(a["flag_meanings"].split()), dtype=v.dtype)
        v.attrs = {**v.attrs, **a}
    missing = [n for n in ds.variables if "long_name" not in ds[n].attrs]
    if missing:
        raise ValueError(f"output variables without CF attributes: {missing}")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ds.attrs.update({
        "Conventions": "CF-1.10",
        "title": f"CloudSat CPR granule {granule_id} with the near-surface blind zone filled by a UNet3+ "
                 "with Monte Carlo dropout",
        "institution": "bzpipe",
        "source": source,
        "history": (f"{now} bzpipe {code_version}: blind zone filled with model {model_id}"
                    + (f"; {history}" if history else "")),
        "references": REFERENCES,
    })
    return ds


def export_netcdf(src: str | Path | xr.Dataset, out: str | Path, *, complevel: int = 4,
                  storage_options: dict[str, Any] | None = None) -> Path:
    """Write a filled granule (Zarr store path / URI, or a Dataset) as compressed CF netCDF-4 at ``out``.

    Every data variable is deflated (``zlib``, ``complevel``, shuffle); the history gains the export.
    The file is written beside ``out`` under a temporary name and renamed when complete.
    """
    ds = src if isinstance(src, xr.Dataset) else xr.open_zarr(str(src), consolidated=False,
                                                              storage_options=storage_options)
    ds = ds.load()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ds.attrs["history"] = (f"{ds.attrs.get('history', '')}\n"
                           f"{now} bzpipe export: netCDF-4 (zlib {complevel})").strip()
    for name in [n for n, v in ds.variables.items() if v.dtype.kind == "M"]:   # microseconds: integers below
        ds[name] = ds[name].copy(data=ds[name].values.astype("datetime64[us]").astype("datetime64[ns]"))
    encoding: dict[str, dict[str, Any]] = {}
    for name, v in ds.variables.items():
        enc: dict[str, Any] = {}
        if name in ds.data_vars and v.ndim > 0:
            enc.update(zlib=True, complevel=int(complevel), shuffle=True)
        if v.dtype.kind == "M":                            # exact to the microsecond, as CF integers
            enc["units"] = "microseconds since 1970-01-01 00:00:00"
            enc["dtype"] = "int64"
        if enc:
            encoding[str(name)] = enc
        v.encoding = {}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    try:
        ds.to_netcdf(tmp, format="NETCDF4", engine="netcdf4", encoding=encoding)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
