"""Report figures as PNG bytes (matplotlib Agg, object API: no global pyplot state).

Each function takes plain arrays / the summary dict of
:func:`bzpipe.metrics.summary.summarize` (JSON form accepted: None = NaN) and
returns PNG bytes.  Heights are shown in km above ground; reflectivity in dBZ.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from bzpipe.metrics.contingency import csi_from_pod_sr
from bzpipe.report import tables

COLORS = {"truth": "black", "UNET": "tab:red", "REP": "goldenrod", "MAR": "tab:green",
          "TELEA": "tab:blue", "NS": "tab:purple"}
LABELS = {"truth": "KaZR (truth)", "UNET": "U-Net (MC mean)", "REP": "REP", "MAR": "MAR",
          "TELEA": "Telea", "NS": "Navier-Stokes"}
EVENT_MARKERS = {"cloud": ("o", "cloud presence"), "shallow_snowfall": ("^", "shallow snowfall"),
                 "virga": ("s", "virga")}
DBZ_NORM = Normalize(-60, 30)


def _color(m: str) -> str:
    return COLORS.get(m, "tab:gray")


def _label(m: str) -> str:
    return LABELS.get(m, m)


def _arr(v: Any) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in np.asarray(v, dtype=object).ravel()],
                    dtype=np.float64).reshape(np.shape(v))


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _iv(node: Any) -> tuple[float, float, float]:
    d = node.to_dict() if hasattr(node, "to_dict") else node
    return _num(d.get("estimate")), _num(d.get("low")), _num(d.get("high"))


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def _new(w: float, h: float, constrained: bool = False) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def curtains_png(cases: dict[str, Any], methods: tuple[str, ...] = ("REP", "MAR", "UNET"),
                 max_height_rows: int | None = None) -> bytes:
    """One row per case: truth | methods | U-Net MC spread | mean profile with the U-Net interval shaded.

    ``cases``: from :func:`bzpipe.evaluate.case_curtains` (``truth`` ``(k, H, W)``,
    ``methods`` {m: (k, H, W)}, ``spread`` ``(k, B, W)``, ``band`` (q_lo, q_hi, lo, hi),
    ``heights``, ``blind_rows``).  The dashed line marks the top of the blind zone.
    """
    truth = np.asarray(cases["truth"])
    k = truth.shape[0]
    methods = tuple(m for m in methods if m in cases.get("methods", {}))
    if k == 0:
        fig = _new(6, 1.5)
        fig.text(0.5, 0.5, "no example cases", ha="center", va="center")
        return _png(fig)
    b = int(cases["blind_rows"])
    h_km = np.asarray(cases["heights"], dtype=np.float64) / 1000.0
    top = min(truth.shape[1], max_height_rows or 4 * b)
    dz = (h_km[1] - h_km[0]) if h_km.size > 1 else 1.0
    bz_top = h_km[b] - dz / 2
    ncol = 1 + len(methods) + 2
    fig = _new(2.5 * ncol, 2.2 * k + 0.8, constrained=True)
    axes = fig.subplots(k, ncol, squeeze=False)
    ext = (0, truth.shape[2], h_km[0] - dz / 2, h_km[top - 1] + dz / 2)
    for i in range(k):
        panels = [("truth", truth[i])] + [(m, np.asarray(cases["methods"][m])[i]) for m in methods]
        im = None
        for j, (name, f) in enumerate(panels):
            ax = axes[i, j]
            ax.set_facecolor("0.92")
            im = ax.imshow(f[:top], origin="lower", aspect="auto", extent=ext, cmap="viridis", norm=DBZ_NORM,
                           interpolation="nearest")
            ax.axhline(bz_top, color="white", ls="--", lw=1.2)
            if i == 0:
                ax.set_title(_label(name), fontsize=9)
            if j == 0:
                site = cases.get("sites", [""] * k)[i]
                ax.set_ylabel(f"{site} #{cases.get('sample', range(k))[i]}\nheight (km)", fontsize=8)
            else:
                ax.set_yticklabels([])
        fig.colorbar(im, ax=list(axes[i, :len(panels)]), fraction=0.02, pad=0.01, label="dBZ")
        ax = axes[i, len(panels)]
        if "spread" in cases:
            sp = np.full(truth[i][:top].shape, np.nan)
            sp[:b] = np.asarray(cases["spread"])[i]
            ims = ax.imshow(sp, origin="lower", aspect="auto", extent=ext, cmap="magma",
                            interpolation="nearest")
            fig.colorbar(ims, ax=ax, fraction=0.08, pad=0.01, label="MC std of per-pass dBZ (dBZ)")
        ax.axhline(bz_top, color="0.5", ls="--", lw=1.2)
        ax.set_yticklabels([])
        if i == 0:
            ax.set_title("U-Net MC spread", fontsize=9)
        ax = axes[i, len(panels) + 1]
        hh = h_km[:top]
        for name, f in panels:
            prof = np.nanmean(np.where(np.isfinite(f[:top]), f[:top], -60.0), axis=1)
            ax.plot(prof, hh, color=_color(name), lw=1.5 if name != "truth" else 2.0, label=_label(name))
        if "band" in cases:
            qlo, qhi, lo, hi = cases["band"]
            lo_p = np.nanmean(np.where(np.isfinite(lo[i]), lo[i], -60.0), axis=1)
            hi_p = np.nanmean(np.where(np.isfinite(hi[i]), hi[i], -60.0), axis=1)
            ax.fill_betweenx(hh[:b], lo_p, hi_p, color=_color("UNET"), alpha=0.25,
                             label=f"U-Net {qlo:g}-{qhi:g} quantiles")
        ax.axhline(bz_top, color="0.5", ls="--", lw=1.2)
        ax.set_xlim(-62, 30)
        ax.set_ylim(ext[2], ext[3])
        ax.yaxis.tick_right()
        if i == 0:
            ax.set_title("mean profile (dBZ)", fontsize=9)
            handles, labels = ax.get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("time step" if ax is not axes[-1, -1] else "dBZ (no echo = -60)", fontsize=8)
    fig.suptitle("Example curtains: dashed line = top of the blind zone", fontsize=10)
    return _png(fig)


def performance_diagram_png(summary: dict[str, Any], site: str = "all") -> bytes:
    """Roebber (2009) performance diagram: POD vs success ratio, CSI contours, bias lines, bootstrap CIs."""
    fig = _new(6.4, 6.0)
    ax = fig.add_subplot()
    g = np.linspace(0.001, 1, 200)
    sr, pod = np.meshgrid(g, g)
    cs = ax.contour(sr, pod, csi_from_pod_sr(pod, sr), levels=np.arange(0.1, 1.0, 0.1), colors="0.6",
                    linewidths=0.8)
    ax.clabel(cs, fmt="%.1f", fontsize=7)
    for bias in (0.5, 1.0, 1.5, 2.0, 4.0):
        x = np.linspace(0, 1, 50)
        ax.plot(x, bias * x, color="0.75", ls="--", lw=0.7)
        ax.annotate(f"{bias:g}", (min(1.0, 1 / bias) * 0.98, min(1.0, bias) * 0.98), fontsize=6, color="0.5")
    scores = summary["scores"][site]
    for m, entry in scores.items():
        for ev, (marker, _lab) in EVENT_MARKERS.items():
            p, plo, phi = _iv(entry[ev]["POD"])
            s, slo, shi = _iv(entry[ev]["SR"])
            if not (math.isfinite(p) and math.isfinite(s)):
                continue
            ax.errorbar(s, p, xerr=[[max(s - slo, 0) if math.isfinite(slo) else 0],
                                    [max(shi - s, 0) if math.isfinite(shi) else 0]],
                        yerr=[[max(p - plo, 0) if math.isfinite(plo) else 0],
                              [max(phi - p, 0) if math.isfinite(phi) else 0]],
                        fmt=marker, color=_color(m), ms=7, capsize=2, lw=0.8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_color(m), marker="o", ls="", label=_label(m)) for m in scores]
    handles += [Line2D([], [], color="0.3", marker=mk, ls="", label=lab)
                for mk, lab in EVENT_MARKERS.values()]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("success ratio (1 - FAR)")
    ax.set_ylabel("probability of detection")
    ax.set_title(f"Performance diagram ({site}); grey: CSI, dashed: frequency bias")
    return _png(fig)


def scores_png(summary: dict[str, Any], site: str = "all",
               keys: tuple[str, ...] = ("MAE", "RMSE", "bias", "EMD", "Dice", "cloud_CSI", "cloud_HSS")
               ) -> bytes:
    """Bar charts of the main scores per method with bootstrap intervals."""
    scores = summary["scores"][site]
    methods = list(scores)
    fig = _new(2.3 * len(keys), 3.0)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        vals, los, his = [], [], []
        for m in methods:
            e, lo, hi = _iv(tables.node(scores[m], key))
            vals.append(e)
            los.append(e - lo if math.isfinite(lo) else 0.0)
            his.append(hi - e if math.isfinite(hi) else 0.0)
        x = np.arange(len(methods))
        ax.bar(x, np.nan_to_num(vals), yerr=[np.maximum(los, 0), np.maximum(his, 0)], capsize=3,
               color=[_color(m) for m in methods])
        for xi, v in zip(x, vals):
            if not math.isfinite(v):
                ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [m for m in methods], rotation=45, fontsize=7)
        unit = " (dBZ)" if key in ("MAE", "RMSE", "bias", "EMD") else ""
        ax.set_title(key.replace("_", " ") + unit, fontsize=9)
    fig.suptitle(f"Blind-zone scores ({site}), {summary['settings'].get('confidence', 0.9):.0%} "
                 "block-bootstrap intervals", fontsize=10)
    return _png(fig)


def psd_png(summary: dict[str, Any]) -> bytes:
    """Vertical spectrum (dB; King et al.'s definition, :mod:`bzpipe.metrics.spectra`) of the blind zone."""
    block = summary["psd"]
    f = _arr(block["freq_per_km"])
    fig = _new(6.0, 4.2)
    ax = fig.add_subplot()
    for name, p in block["power_db"].items():
        p = _arr(p)
        flat = not np.isfinite(p[1:]).any()  # zero power: a vertically uniform fill (REP)
        ax.plot(f[1:], p[1:], "o-", color=_color(name), lw=2.2 if name == "truth" else 1.4, ms=3,
                label=_label(name) + (" (no vertical variation: zero power)" if flat else ""))
    ax.set_xlabel("vertical frequency (cycles per km)")
    ax.set_ylabel("20 log$_{10}$ mean |FFT| (dB re 1 dBZ)")
    ax.set_title("Vertical spectrum in the blind zone, as King et al. (2024) (DC term omitted)")
    ax.legend(fontsize=7)
    return _png(fig)


def cloud_base_png(summary: dict[str, Any], max_km: float | None = None) -> bytes:
    """PDFs of the lowest-echo height per profile (filled curtains), truth and every method."""
    block = summary["cloud_base"]
    edges = _arr(block["edges_m"]) / 1000.0
    top = _num(block["blind_zone_top_m"]) / 1000.0
    fig = _new(6.0, 4.2)
    ax = fig.add_subplot()
    for name, d in block["density"].items():
        d = _arr(d) * 1000.0  # per km
        ax.stairs(d, edges, color=_color(name), lw=2.2 if name == "truth" else 1.4,
                  label=f"{_label(name)} (no echo: {_num(block['no_echo_fraction'][name]):.0%})")
    ax.axvline(top, color="0.4", ls="--", lw=1, label="top of blind zone")
    ax.set_xlim(0, max_km or min(edges[-1], 4 * top if top > 0 else edges[-1]))
    ax.set_xlabel("lowest echo height (km AGL)")
    ax.set_ylabel("probability density (per km)")
    ax.set_title("Cloud-base (lowest echo) height per profile")
    ax.legend(fontsize=7)
    return _png(fig)


def uncertainty_png(summary: dict[str, Any]) -> bytes:
    """Spread-skill (binned MC spread vs RMSE of the MC mean) and interval coverage."""
    block = summary.get("uncertainty")
    fig = _new(9.0, 4.0)
    a1, a2 = fig.subplots(1, 2)
    if not block:
        a1.text(0.5, 0.5, "no MC-dropout output", ha="center")
        return _png(fig)
    ss = block["spread_skill"]
    s, r = _arr(ss["spread"]), _arr(ss["rmse"])
    a1.plot(s, r, "o-", color=_color("UNET"), label="U-Net MC dropout")
    hi = np.nanmax(np.concatenate([s, r, [1.0]]))
    a1.plot([0, hi], [0, hi], color="0.5", ls="--", label="1:1 (calibrated)")
    a1.set_xlabel("binned MC spread (dBZ)")
    a1.set_ylabel("RMSE of the MC mean (dBZ)")
    a1.set_title(f"Spread-skill (ratio {_num(block['spread_skill_ratio']):.2f})", fontsize=9)
    a1.legend(fontsize=7)
    cov = block.get("coverage", [])
    if cov:
        x = np.arange(len(cov))
        a2.bar(x - 0.2, [c["nominal"] for c in cov], 0.4, color="0.7", label="nominal")
        a2.bar(x + 0.2, [_num(c["observed"]) for c in cov], 0.4, color=_color("UNET"), label="observed")
        a2.set_xticks(x, [f"{c['lower_q']:g}-{c['upper_q']:g}" for c in cov])
        a2.set_ylim(0, 1)
        a2.legend(fontsize=7)
    a2.set_title("Coverage of the MC-dropout intervals", fontsize=9)
    a2.set_xlabel("quantile interval")
    return _png(fig)


def saliency_png(xai: dict[str, Any], heights: np.ndarray | None = None) -> bytes:
    """Case input channels, their saliency (mean |gradient| over patches), and drop-channel importance."""
    names = list(xai["input_names"])
    sal = np.asarray(xai["saliency_mean"])
    case = np.asarray(xai["case_input"])
    b = int(xai["blind_rows"])
    nc = len(names)
    fig = _new(2.4 * nc, 6.6)
    axes = fig.subplots(3, nc, squeeze=False)
    for j, name in enumerate(names):
        ax = axes[0, j]
        if j < case.shape[0]:
            ax.imshow(case[j], origin="lower", aspect="auto", cmap="viridis" if j == 0 else "coolwarm")
        else:  # the mask channel: 1 in the blind zone
            mask = np.zeros(case.shape[-2:])
            mask[:b] = 1.0
            ax.imshow(mask, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=1)
        ax.axhline(b - 0.5, color="k", ls="--", lw=1)
        ax.set_title(f"{name} (input)", fontsize=8)
        ax = axes[1, j]
        ax.imshow(sal[j], origin="lower", aspect="auto", cmap="inferno")
        ax.axhline(b - 0.5, color="w", ls="--", lw=1)
        ax.set_title(f"|grad| {name} ({_num(xai['channel_share'].get(name)):.0%})", fontsize=8)
        for a in (axes[0, j], axes[1, j]):
            a.set_xticks([])
            a.set_yticks([])
    for ax in axes[2, 1:]:
        ax.set_visible(False)
    ax = axes[2, 0]
    drop = xai.get("drop_channel")
    if drop:
        keys = [k for k in drop if k != "none"]
        ax.barh(keys, [_num(drop[k]["delta_mae"]) for k in keys], color="tab:blue")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("MAE increase (dBZ)")
        ax.set_title(f"drop-channel importance ({xai.get('drop_method')})", fontsize=8)
    else:
        ax.text(0.5, 0.5, "drop-channel importance not computed", ha="center", fontsize=7)
    fig.suptitle("Vanilla-gradient saliency of the mean blind-zone prediction (dashed: blind-zone top)",
                 fontsize=10)
    return _png(fig)


def features_png(xai: dict[str, Any]) -> bytes:
    """The first filters of every encoder level for the chosen case (forward hooks)."""
    feats = xai.get("features") or {}
    levels = list(feats)
    k = max((np.asarray(v).shape[0] for v in feats.values()), default=1)
    fig = _new(1.5 * k, 1.5 * max(len(levels), 1))
    axes = fig.subplots(max(len(levels), 1), k, squeeze=False)
    for i, lev in enumerate(levels):
        maps = np.asarray(feats[lev])
        for j in range(k):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < maps.shape[0]:
                ax.imshow(maps[j], origin="lower", aspect="auto", cmap="viridis")
            if j == 0:
                ax.set_ylabel(f"{lev}\n{maps.shape[-2]}x{maps.shape[-1]}", fontsize=7)
    fig.suptitle("Encoder feature maps of the chosen case", fontsize=10)
    return _png(fig)
