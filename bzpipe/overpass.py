"""Overpass validation: CloudSat granules that pass near a KaZR site, scored against that KaZR.

1. :func:`find_overpasses` looks through the filled granules of one model (and settings) for
   profiles within ``radius_km`` of a site; the closest profile dates the overpass.
2. :func:`kazr_cpr_view` takes the site's KaZR within ``window_h`` of the overpass, colocates it
   with ERA-5 on the model's grid (:func:`bzpipe.colocate.colocate`) and puts it through the SAME
   forward operator as the CPR-resolution training data (:func:`bzpipe.forward.cpr.cpr_view`):
   time becomes distance with the ERA-5 wind of each height at the overpass (frozen turbulence),
   KaZR time running along the CPR's flight direction (as in the orbital-radar simulator [OR]).
   Each CPR profile ``s`` metres from the closest approach is matched with the operator's profile
   at ``s``: a pixel-wise match is exact in the synthetic world (its CPR curtain is made that way)
   and a statistical one for real overpasses, where the mean profile (``profile_r``) is the robust
   score.
3. :func:`score` compares each method's fill of the hidden rows (the U-Net's MC mean from the
   output; REP and MAR computed here from the same observed curtain and the same per-profile
   hidden rows) with the operator's view of the KaZR: Pearson r and MAE in dBZ (no echo = -60
   dBZ, as :mod:`bzpipe.metrics`), r of the mean profile, and the event scores (cloud presence,
   shallow snowfall, virga; POD, FAR, CSI, HSS) of :mod:`bzpipe.metrics.contingency`.
4. :func:`write_report`: ``reports/<run>/overpass.json`` (``{"pearson_r": {"UNET", "REP", "MAR"}, ...}``)
   and ``overpass.png``.
"""

from __future__ import annotations

import io
import logging
import math
import re
import zlib
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bzpipe.baselines import marching_average_image, snap_no_echo
from bzpipe.config import CprOperatorConfig, GridConfig, Site, resolve_site
from bzpipe.forward.cpr import advected_distance, cpr_view
from bzpipe.metrics.contingency import cloud_presence, contingency_table, shallow_snowfall, virga
from bzpipe.metrics.pointwise import NO_ECHO_DBZ, fill_no_echo
from bzpipe.schema import dbz_to_norm, norm_to_dbz
from bzpipe.store import Store
from bzpipe.store.layout import era5_key, output_prefix, raw_prefix, report_key

log = logging.getLogger(__name__)

METHODS = ("UNET", "REP", "MAR")
EARTH_RADIUS_KM = 6371.0
_DAY = re.compile(r"\.(\d{8})\.\d{6}\.")


@dataclass
class Overpass:
    """One granule passing a site: the profiles within the radius and their signed along-track
    distance (m) from the closest approach (positive along the flight direction)."""

    granule_id: str
    output_key: str
    site: str
    time: str
    distance_km: float
    profiles: list[int]
    along_m: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def haversine_km(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    p, q = np.radians(lat), np.radians(lat0)
    a = np.sin((p - q) / 2) ** 2 + np.cos(p) * np.cos(q) * np.sin(np.radians(lon - lon0) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def along_track_m(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Cumulative great-circle distance (m) along the profiles."""
    p, lam = np.radians(lat), np.radians(lon)
    a = np.sin(np.diff(p) / 2) ** 2 + np.cos(p[:-1]) * np.cos(p[1:]) * np.sin(np.diff(lam) / 2) ** 2
    step = 2 * EARTH_RADIUS_KM * 1000.0 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return np.concatenate([[0.0], np.cumsum(step)])


def output_keys(store: Store, model_id: str, settings_id: str) -> list[str]:
    """The complete filled granules of one model and settings."""
    prefix = output_prefix(model_id, settings_id)
    return [k for k in store.list_dirs(prefix) if k.endswith(".zarr") and store.is_complete(k)]


def find_overpasses(store: Store, keys: list[str], sites: list[str | Site],
                    radius_km: float) -> list[Overpass]:
    """Every (granule, site) pair whose track comes within ``radius_km`` of the site."""
    from bzpipe.infer.output import open_output

    found = []
    for key in keys:
        ds = open_output(store, key)
        lat, lon = ds["latitude"].values.astype(np.float64), ds["longitude"].values.astype(np.float64)
        times = ds["time"].values
        along = along_track_m(lat, lon)
        for s in sites:
            site = resolve_site(s)
            d = haversine_km(lat, lon, site.latitude, site.longitude)
            if not np.isfinite(d).any() or np.nanmin(d) > radius_km:
                continue
            j = int(np.nanargmin(d))
            near = np.flatnonzero(d <= radius_km)
            found.append(Overpass(granule_id=str(ds.attrs.get("granule_id", "")), output_key=key,
                                  site=site.name, time=str(times[j])[:19] + "Z", distance_km=float(d[j]),
                                  profiles=near.tolist(), along_m=(along[near] - along[j]).tolist()))
    return found


def kazr_days(time: str, window_h: float) -> list[Any]:
    """UTC days the KaZR window around an overpass touches."""
    t = pd.Timestamp(time.rstrip("Z"))
    w = timedelta(hours=window_h)
    return sorted({(t - w).date(), t.date(), (t + w).date()})


def kazr_cpr_view(store: Store, site: str | Site, time: str, along_m: np.ndarray, heights_agl: np.ndarray,
                  op: CprOperatorConfig, *, window_h: float, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The site's KaZR around ``time`` as the CPR would see it at each along-track distance ``along_m``:
    ``(dbz (N, H), observed (N, H))`` on the model rows ``heights_agl`` (module docstring, step 2)."""
    from bzpipe.colocate import colocate
    from bzpipe.sources.arm import read_kazr
    from bzpipe.sources.era5 import read_era5

    site = resolve_site(site)
    t_over = pd.Timestamp(time.rstrip("Z"))
    days = {d.strftime("%Y%m%d") for d in kazr_days(time, window_h)}
    kazr = [k for k in store.list(raw_prefix("kazr", site.name))
            if (m := _DAY.search(k)) and m.group(1) in days]
    months = sorted({d[:6] for d in days})
    era5_keys = [era5_key(site.name, m) for m in months]
    era5_keys = [k for k in era5_keys if store.exists(k)]
    if not kazr or not era5_keys:
        raise FileNotFoundError(f"no KaZR ({len(kazr)} files) or ERA-5 ({len(era5_keys)} months) at "
                                f"{site.name} for the overpass at {time}")
    radar = xr.concat([_read(store, k, read_kazr) for k in kazr], dim="time").sortby("time")
    era5 = xr.concat([_read(store, k, read_era5) for k in era5_keys], dim="time").sortby("time")
    h = np.asarray(heights_agl, np.float64)
    dz = float(h[1] - h[0])
    step = float(np.median(np.diff(radar["time"].values).astype("timedelta64[ms]")
                           .astype(np.float64))) / 1000.0
    grid = GridConfig(n_heights=h.size, top_m=dz * h.size, time_step_s=max(1.0, round(step)))
    w = pd.Timedelta(hours=window_h)
    col = colocate(radar, era5, site, grid, t_over - w, t_over + w).load()
    times = col["time"].values.astype("datetime64[ns]")
    i0 = int(np.argmin(np.abs(times - np.datetime64(t_over.to_datetime64(), "ns"))))
    speed = np.hypot(col["u"].values[i0], col["v"].values[i0])                      # (H,) at the overpass
    x = advected_distance(times, np.broadcast_to(speed, (times.size, h.size)), t_over.to_datetime64(),
                          min_speed_m_s=op.min_wind_m_s)
    valid = (col["n_profiles"].values > 0)[:, None] & (col["n_gates"].values > 0)[None, :]
    s = np.asarray(along_m, np.float64)
    start = float(s.min()) - 0.5 * op.profile_spacing_m
    n = int(math.ceil((s.max() - start) / op.profile_spacing_m)) + 1
    view = cpr_view(col["reflectivity"].values, np.append(h - dz / 2, h[-1] + dz / 2), x,
                    rng=np.random.default_rng([seed, zlib.crc32(site.name.encode()),
                                               int(t_over.value // 10**9)]),
                    valid=valid, n_profiles=n, start_m=start, pulse_length_m=op.pulse_length_m,
                    range_sampling_m=op.range_sampling_m, profile_spacing_m=op.profile_spacing_m,
                    ifov_m=op.ifov_m, mds_dbz=op.mds_dbz, noise=op.noise, ka_to_w_conversion=op.ka_to_w)
    k = np.clip(np.rint((s - start) / op.profile_spacing_m - 0.5).astype(int), 0, n - 1)
    return view.dbz_grid[k], view.observed[k]


def method_fills(out: xr.Dataset) -> dict[str, np.ndarray]:
    """Each method's dBZ (N, H) on the model grid for the profiles of ``out``: the U-Net's MC mean,
    REP (the first visible row copied down) and MAR (marching average, 17 x 17), all with the
    output's own per-profile hidden rows."""
    obs = out["grid_observed"].values.astype(np.float64)                         # (N, H)
    hidden = out["hidden_rows"].values.astype(int)
    n, h = obs.shape
    rows = np.arange(h)[None, :]
    mask = rows < hidden[:, None]
    top = np.take_along_axis(obs, np.clip(hidden, 0, h - 1)[:, None], 1)
    rep = np.where(mask, top, obs)
    img = dbz_to_norm(obs).T                                                      # (H, N), row 0 = surface
    mar = norm_to_dbz(snap_no_echo(marching_average_image(img, mask.T, 17))).T
    return {"UNET": out["mc_mean"].values.astype(np.float64), "REP": rep, "MAR": np.where(mask, mar, obs)}


def score(fills: dict[str, np.ndarray], truth: np.ndarray, truth_observed: np.ndarray, hidden: np.ndarray,
          first_visible: np.ndarray) -> dict[str, Any]:
    """Scores of each method against ``truth`` over the hidden rows (module docstring, step 3)."""
    n, h = truth.shape
    mask = (np.arange(h)[None, :] < hidden[:, None]) & truth_observed
    t = fill_no_echo(truth)
    out: dict[str, Any] = {"pearson_r": {}, "mae_dbz": {}, "profile_r": {}, "events": {},
                           "n_pixels": int(mask.sum())}
    low = int(hidden.min()) if hidden.size else 0
    t_prof = _mean_profile(truth[:, :low])
    ev_truth = _events(truth, mask, first_visible)
    for name, f in fills.items():
        p = fill_no_echo(f)
        out["pearson_r"][name] = _pearson(p[mask], t[mask])
        out["mae_dbz"][name] = float(np.mean(np.abs(p[mask] - t[mask]))) if mask.any() else float("nan")
        out["profile_r"][name] = _pearson(_mean_profile(f[:, :low]), t_prof)
        ev = _events(f, mask, first_visible)
        out["events"][name] = {k: contingency_table(ev[k], ev_truth[k]).to_dict() for k in ev}
    return out


def _events(dbz: np.ndarray, mask: np.ndarray, first_visible: np.ndarray) -> dict[str, np.ndarray]:
    """Per profile: cloud presence in the hidden rows, shallow snowfall and virga (lowest row vs the
    first visible row)."""
    d = np.where(mask, dbz, np.nan)
    cloud = cloud_presence(d[:, :, None], mask[:, :, None], axis=(-2, -1))
    has = mask.any(axis=1)
    # lowest scored row
    lowest = np.take_along_axis(np.asarray(dbz, np.float64), np.argmax(mask, axis=1)[:, None], 1)
    above = first_visible[:, None]
    kw = {"valid_lowest": has[:, None], "valid_above": has[:, None]}
    return {"cloud": cloud, "shallow_snowfall": shallow_snowfall(lowest, above, **kw),
            "virga": virga(lowest, above, **kw)}


def _mean_profile(dbz: np.ndarray) -> np.ndarray:
    z = np.where(np.isfinite(dbz), 10.0 ** (np.asarray(dbz, np.float64) / 10.0), 0.0).mean(axis=0)
    with np.errstate(divide="ignore"):
        return np.where(z > 0, 10.0 * np.log10(np.maximum(z, 1e-30)), NO_ECHO_DBZ)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _read(store: Store, key: str, reader: Any) -> xr.Dataset:
    with store.local_path(key) as p:
        return reader(p).load()


# --------------------------------------------------------------------------- the report


def validate(store: Store, passes: list[Overpass], heights_agl: np.ndarray, op: CprOperatorConfig, *,
             window_h: float, min_profiles: int,
             seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every overpass and all of them pooled; returns ``(report, curtains for the figure)``."""
    from bzpipe.infer.output import open_output

    pooled: dict[str, list[np.ndarray]] = {"truth": [], "observed": [], "hidden": [], "first": [],
                                           **{m: [] for m in METHODS}}
    per_pass, curtains = [], []
    for ov in passes:
        out = open_output(store, ov.output_key).isel(profile=ov.profiles).load()
        filled = np.isin(out["fill_status"].values, (0, 2))
        rec: dict[str, Any] = {**{k: v for k, v in ov.to_dict().items() if k not in ("profiles", "along_m")},
                               "n_profiles": int(filled.sum())}
        if filled.sum() < min_profiles:
            rec["skipped"] = (f"{int(filled.sum())} filled profiles within the radius, "
                              f"fewer than {min_profiles}")
            per_pass.append(rec)
            continue
        try:
            truth, seen = kazr_cpr_view(store, ov.site, ov.time, np.asarray(ov.along_m)[filled], heights_agl,
                                        op, window_h=window_h, seed=seed)
        except (FileNotFoundError, ValueError) as e:
            rec["skipped"] = f"no KaZR to compare with: {e}"
            per_pass.append(rec)
            continue
        sub = out.isel(profile=np.flatnonzero(filled))
        fills = method_fills(sub)
        hidden = sub["hidden_rows"].values.astype(int)
        obs = sub["grid_observed"].values
        first = np.take_along_axis(obs, np.clip(hidden, 0, obs.shape[1] - 1)[:, None], 1)[:, 0]
        rec.update(score(fills, truth, seen, hidden, first))
        per_pass.append(rec)
        for k, v in (("truth", truth), ("observed", seen), ("hidden", hidden), ("first", first),
                     *fills.items()):
            pooled[k].append(v)
        curtains.append({"title": f"{ov.granule_id} over {ov.site} at {ov.time}", "truth": truth,
                         "hidden": hidden, **fills})
    scored = [r for r in per_pass if "pearson_r" in r]
    report: dict[str, Any] = {"overpasses": per_pass, "n_overpasses": len(scored)}
    if scored:
        cat = {k: np.concatenate(v) for k, v in pooled.items()}
        report.update(score({m: cat[m] for m in METHODS}, cat["truth"], cat["observed"], cat["hidden"],
                            cat["first"]))
        report["n_profiles"] = int(cat["truth"].shape[0])
    else:
        report["pearson_r"] = {m: None for m in METHODS}
    return report, curtains


def figure_png(curtains: list[dict[str, Any]], heights_agl: np.ndarray, report: dict[str, Any],
               top_m: float = 3000.0) -> bytes:
    """Truth and the three fills of the first scored overpass (rows up to ``top_m``), with each r."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True, sharey=True).ravel()
    if not curtains:
        fig.text(0.5, 0.5, "no overpass could be scored", ha="center")
    else:
        c = curtains[0]
        rows = heights_agl <= top_m
        n = c["truth"].shape[0]
        ext = (0, n, 0, float(heights_agl[rows][-1]) / 1000)
        for ax, name in zip(axes, ("truth", *METHODS)):
            im = ax.imshow(c[name][:, rows].T, origin="lower", aspect="auto", extent=ext, cmap="viridis",
                           vmin=-40, vmax=20, interpolation="nearest")
            dz = float(heights_agl[1] - heights_agl[0])
            ax.step(np.arange(n + 1), np.append(c["hidden"], c["hidden"][-1]) * dz / 1000,
                    where="post", color="w", lw=0.8, ls="--")
            r = "" if name == "truth" else f"  r = {report['pearson_r'].get(name, float('nan')):.2f}"
            ax.set_title(("KaZR through the CPR operator" if name == "truth" else name) + r, fontsize=10)
            ax.set_facecolor("0.85")
        for ax in axes[2:]:
            ax.set_xlabel("profile near the site")
        for ax in axes[::2]:
            ax.set_ylabel("height AGL (km)")
        fig.colorbar(im, ax=list(axes), label="dBZ", shrink=0.8)
        fig.suptitle(c["title"] + " (dashed: top of the hidden rows)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(store: Store, run: str, report: dict[str, Any], png: bytes,
                 producer: dict[str, Any] | None = None) -> tuple[str, str]:
    """``reports/<run>/overpass.json`` and ``overpass.png``; returns their keys."""
    jkey, pkey = report_key(run, "overpass.json"), report_key(run, "overpass.png")
    store.write_json(jkey, _jsonable(report), producer=producer)
    store.write_bytes(pkey, png, producer=producer)
    return jkey, pkey


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
