"""Write a filled granule: Zarr under ``outputs/cloudsat/<model id>-<settings id>/<granule id>.zarr`` and a
curtain PNG.

A Zarr store is many objects, so it is written aside (a hidden sibling key) and
swapped in only once complete (:func:`bzpipe.store.replace.replace`): the old
manifest entry is dropped, the new store moved in, its entry written.  A crash
mid-write leaves the previous output (if any) complete and untouched, plus a
hidden leftover that a later write of the same key sweeps away; a crash
mid-swap leaves a journal that the next write (or run) finishes.  So a key with
a manifest entry always holds a whole output, also after a forced rewrite.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from typing import Any

import numpy as np
import xarray as xr

from bzpipe.store import ManifestEntry, Store, write_error
from bzpipe.store.layout import aside_key
from bzpipe.store.replace import finish_replacement, replace, sweep_aside

PROFILE_CHUNK = 4096
#: a hidden leftover of a killed writer is swept once older than this (a live writer is never that slow)
LEFTOVER_AGE_S = 3600.0


def content_sha256(ds: xr.Dataset) -> str:
    """Checksum of a Dataset's content: variable names, dims, dtypes and values, in sorted order."""
    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        v = ds[name]
        h.update(f"{name}|{v.dims}|{v.dtype}|{v.shape}".encode())
        a = np.ascontiguousarray(v.values)
        h.update(a.view(np.uint8).tobytes() if a.dtype != object else repr(a.tolist()).encode())
    return h.hexdigest()


def write_output(store: Store, key: str, ds: xr.Dataset, provenance: dict[str, Any]) -> ManifestEntry:
    """Write ``ds`` as Zarr aside, then swap it in as ``key`` with its manifest entry.

    An existing output at ``key`` stays complete and readable until the new one is whole.  The
    manifest's ``sha256`` is :func:`content_sha256` of the data; ``producer`` is the provenance
    record, which the Zarr root attributes also carry (as JSON).
    """
    finish_replacement(store, key)
    sweep_aside(store, key, LEFTOVER_AGE_S)
    ds = ds.copy()
    ds.attrs["provenance"] = json.dumps(provenance, sort_keys=True, default=str)
    encoding = {}
    for name, v in ds.data_vars.items():
        if "profile" in v.dims:
            encoding[name] = {"chunks": tuple(min(PROFILE_CHUNK, n) if d == "profile" else n
                                              for d, n in zip(v.dims, v.shape))}
    kw: dict[str, Any] = {"mode": "w-", "encoding": encoding, "consolidated": False}
    if not store.is_local:
        kw["storage_options"] = store.storage_options
    aside = aside_key(key)
    try:
        ds.to_zarr(store.uri(aside), **kw)
    except BaseException as e:
        with contextlib.suppress(Exception):
            store.fs.rm(store.uri(aside), recursive=True)
        if isinstance(e, OSError):
            raise write_error(store.uri(key), e, "the previous output, if any, is untouched") from e
        raise
    digest = content_sha256(ds)
    try:
        size = int(store.fs.du(store.uri(aside)))
    except (OSError, ValueError):
        size = 0
    return replace(store, aside, key, sha256=digest, size=size, producer=provenance)


def open_output(store: Store, key: str) -> xr.Dataset:
    """Open a complete output (lazily); raises ``FileNotFoundError`` when it is not complete."""
    if not store.is_complete(key):
        raise FileNotFoundError(f"{store.uri(key)}: no complete output")
    kw: dict[str, Any] = {"consolidated": False}
    if not store.is_local:
        kw["storage_options"] = store.storage_options
    return xr.open_zarr(store.uri(key), **kw)


def curtain_png(ds: xr.Dataset, *, max_height_m: float | None = None, max_columns: int = 3000) -> bytes:
    """A three-panel curtain (observed, filled, MC-dropout std) of an output Dataset, as PNG bytes.

    Model-grid fields, x = profile, y = height above ground (up to ``max_height_m``,
    default 4 x the blind zone, at least 3 km); the blind-zone top is drawn as a line.
    Long tracks are thinned to at most ``max_columns`` profiles for drawing.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    blind = float(ds.attrs.get("blind_zone_m", 1200.0))
    top = max_height_m or max(3000.0, 4 * blind)
    h = ds["height"].values
    rows = h <= top
    n = ds.sizes["profile"]
    step = max(1, int(np.ceil(n / max_columns)))
    sel = slice(0, n, step)
    panels = [("grid_observed",
               "observed (CPR on the model grid; hidden from the model below the dashed line)",
               "dBZ", "viridis", (-40, 20)),
              ("mc_mean", "filled (MC-dropout mean)", "dBZ", "viridis", (-40, 20)),
              ("mc_std", "uncertainty (MC-dropout std)", "dB", "magma", None)]
    fig = Figure(figsize=(11, 8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    dz = float(h[1] - h[0]) if h.size > 1 else 1.0
    extent = (0, n, (h[rows][0] - dz / 2) / 1000, (h[rows][-1] + dz / 2) / 1000)
    for ax, (name, title, units, cmap, lim) in zip(axes, panels):
        a = ds[name].isel(profile=sel).values[:, rows].T
        if name == "mc_std":   # grey where nothing was predicted
            a = np.where(ds["grid_filled_flag"].isel(profile=sel).values[:, rows].T > 0, a, np.nan)
        if lim is None:
            finite = a[np.isfinite(a)]
            lim = (0.0, float(np.percentile(finite, 99)) if finite.size and finite.max() > 0 else 1.0)
        im = ax.imshow(a, origin="lower", aspect="auto", extent=extent, cmap=cmap, vmin=lim[0], vmax=lim[1],
                       interpolation="nearest")
        if "hidden_rows" in ds:   # the top of each profile's hidden rows (all rows overlapping flagged bins)
            top_km = ds["hidden_rows"].isel(profile=sel).values * dz / 1000
            ax.step(np.arange(top_km.size) * step, top_km, where="post", color="w", lw=0.8, ls="--")
        else:
            ax.axhline(blind / 1000, color="w", lw=0.8, ls="--")
        ax.set_facecolor("0.85")
        ax.set_ylabel("height AGL (km)")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, label=units, pad=0.01)
    axes[-1].set_xlabel("profile")
    fig.suptitle(f"CloudSat granule {ds.attrs.get('granule_id', '')}  model {ds.attrs.get('model_id', '')}  "
                 f"(grey: no echo / no data; dashed: blind-zone top)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
