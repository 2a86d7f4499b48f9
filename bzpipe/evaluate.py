"""Run every method on the same masked test patches and score them the same way.

Steps (:func:`run_evaluation`):

1. open the split (:class:`bzpipe.torchdata.PatchDataset`, channels as the
   model was trained) and the trained model (:func:`bzpipe.checkpoint.load_model`);
2. per batch: the baselines (:mod:`bzpipe.baselines`, on normalized
   reflectivity) and the U-Net with MC dropout (:func:`bzpipe.model.mc_predict`
   on :func:`bzpipe.masking.mask_blind_zone` inputs) fill the blind zone;
   everything is converted to dBZ (:func:`bzpipe.schema.norm_to_dbz`, NaN = no
   echo) and only the blind zone is kept (:class:`EvalFields`);
3. ONE evaluation mask is built (:func:`build_mask`): the blind zone, minus the
   pixels whose U-Net MC spread is above ``spread_exclusion_quantile`` if set;
   the same mask goes to every metric of every method;
4. :func:`bzpipe.metrics.summary.summarize` scores all methods with paired,
   site-stratified block-bootstrap intervals (site-days resampled), per site;
5. optionally explainability (:mod:`bzpipe.xai`) on a few patches.

U-Net fields in dBZ: the MC statistics are taken per pass in dBZ, as King et
al. (2024) do (:mod:`bzpipe.model.mc_stats`: each pass below -0.5 normalized is
no echo = -60 dBZ; mean, spread and quantiles over the passes in dBZ), so clear
passes cannot erase the echo of the others.  The scored fill is that MC mean
(NaN = no echo, i.e. every pass clear); the spread is the standard deviation
of the per-pass dBZ values.

Optional test-patch exclusion of the authors (``max_truth_dbz``, their
``MAX_DBZ = 20``): patches whose truth anywhere in the patch exceeds it are left
out of the scores for every method; the report states the rule and the count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bzpipe.baselines import run_baselines
from bzpipe.checkpoint import check_trained_dataset, load_model
from bzpipe.config import EvalConfig
from bzpipe.dataset.reader import open_dataset, sample_selection
from bzpipe.distributed import pick_device
from bzpipe.errors import BzpipeError
from bzpipe.masking import mask_blind_zone
from bzpipe.metrics import distributions as dist
from bzpipe.metrics import seeds
from bzpipe.metrics.summary import ScoreSettings, summarize, to_json
from bzpipe.metrics.uncertainty import spread_exclusion_mask
from bzpipe.model.mc_dropout import mc_predict
from bzpipe.schema import DBZ_PER_NORM, norm_to_dbz
from bzpipe.store import Store
from bzpipe.torchdata import PatchDataset

log = logging.getLogger(__name__)

UNET = "UNET"


@dataclass
class EvalFields:
    """Blind-zone fields of every method on the evaluated patches (dBZ, NaN = no echo).

    Shapes: n patches, B blind-zone rows (row 0 = surface), W columns, H rows in all.
    """

    indices: np.ndarray            # (n,) sample index in the split
    truth: np.ndarray              # (n, B, W)
    preds: dict[str, np.ndarray]   # method -> (n, B, W); UNET = MC mean
    row_above: np.ndarray          # (n, W) first observed row above the blind zone
    base_above: np.ndarray         # (n, W) lowest observed echo height above the blind zone, m (NaN none)
    spread: np.ndarray | None      # (n, B, W) U-Net MC std of the per-pass dBZ values, dBZ
    quantiles: dict[float, np.ndarray] = field(default_factory=dict)  # q -> (n, B, W)
    sites: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))  # (n,)
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="datetime64[ns]"))  # (n,)
    heights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (H,) m AGL
    truth_max: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) max truth dBZ of the patch

    @property
    def blind_rows(self) -> int:
        return int(self.truth.shape[1])

    def subset(self, keep: np.ndarray) -> EvalFields:
        """The fields of the patches where ``keep`` (bool ``(n,)``) is True."""
        def sel(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[keep]
        return EvalFields(indices=self.indices[keep], truth=self.truth[keep],
                          preds={m: v[keep] for m, v in self.preds.items()}, row_above=self.row_above[keep],
                          base_above=self.base_above[keep], spread=sel(self.spread),
                          quantiles={q: v[keep] for q, v in self.quantiles.items()}, sites=self.sites[keep],
                          times=self.times[keep], heights=self.heights,
                          truth_max=self.truth_max[keep] if self.truth_max.size else self.truth_max)


@dataclass
class EvaluationResult:
    summary: dict[str, Any]
    fields: EvalFields
    valid: np.ndarray              # (n, B, W) the one evaluation mask
    mask_info: dict[str, Any]
    model_meta: dict[str, Any]
    cases: dict[str, Any]          # example curtains for the report
    xai: dict[str, Any] | None = None


def _select_indices(n: int, max_patches: int | None) -> np.ndarray:
    """All samples, or ``max_patches`` spread evenly over the split (keeps the time/site mix)."""
    if max_patches is None or max_patches >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_patches).round().astype(np.int64))


def split_coords(dataset: PatchDataset) -> dict[str, np.ndarray]:
    """Per-sample ``site`` / ``time_start`` and the ``height`` of the rows of a split."""
    ds = open_dataset(None, dataset.uri, require_complete=False).open_split(dataset.split)
    n, _, h, _ = dataset.shape
    sites = [str(v) for v in np.asarray(ds["site"].values).tolist()] if "site" in ds else ["unknown"] * n
    out = {"site": np.array(sites, dtype=object),
           "time_start": (np.asarray(ds["time_start"].values) if "time_start" in ds
                          else np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")),
           "height": (np.asarray(ds["height"].values, dtype=np.float64) if "height" in ds
                      else np.arange(h, dtype=np.float64))}
    ds.close()
    return out


def _dbz(norm: np.ndarray) -> np.ndarray:
    return norm_to_dbz(np.asarray(norm, dtype=np.float32)).astype(np.float32)


def predict_fields(model: torch.nn.Module, dataset: PatchDataset, cfg: EvalConfig,
                   device: torch.device | str = "cpu", indices: np.ndarray | None = None,
                   progress: Callable[[int, int], None] | None = None) -> EvalFields:
    """Run the baselines (``cfg.baselines``) and the MC-dropout U-Net on ``indices`` of ``dataset``;
    keep the blind zone."""
    blind = int(dataset.blind_zone_rows)
    n_all, _, h, _ = dataset.shape
    if not 0 < blind < h:
        raise BzpipeError(f"{dataset.uri}: blind_zone_rows={blind} does not fit {h} rows")
    idx = np.arange(n_all) if indices is None else np.asarray(indices, dtype=np.int64)
    coords = split_coords(dataset)
    heights = coords["height"]
    truth, row_above, base_above, spread, truth_max = [], [], [], [], []
    preds: dict[str, list[np.ndarray]] = {m: [] for m in (UNET, *cfg.baselines)}
    quants: dict[float, list[np.ndarray]] = {float(q): [] for q in cfg.quantiles}
    device = torch.device(device)
    for start in range(0, idx.size, cfg.batch_size):
        sel = idx[start:start + cfg.batch_size]
        x = torch.stack(dataset.__getitems__(sel.tolist()))               # (b, C, H, W) normalized
        refl = x[:, 0].numpy()                                            # (b, H, W)
        t_dbz = _dbz(refl)
        truth.append(t_dbz[:, :blind])
        truth_max.append(np.nanmax(np.where(np.isfinite(t_dbz), t_dbz, -np.inf), axis=(1, 2)))
        row_above.append(t_dbz[:, blind])
        base_above.append(dist.lowest_echo_height(t_dbz[:, blind:], heights[blind:]))
        filled = run_baselines(refl, blind, cfg.baselines, cfg.mar_window, cfg.inpaint_radius)
        for name, f in filled.items():
            preds[name].append(_dbz(f[:, :blind]))
        inputs, _ = mask_blind_zone(x, blind, cfg.ramp_rows)              # (b, C + 1, H, W)
        mc = mc_predict(model, inputs.to(device), n_passes=cfg.mc_passes, quantiles=tuple(quants),
                        max_batch=cfg.mc_max_batch,
                        band_rows=min(h, blind + cfg.ramp_rows) if cfg.mc_path == "band" else None)
        preds[UNET].append(_dbz(mc["mean"][:, 0, :blind].cpu().numpy()))
        spread.append((mc["std"][:, 0, :blind].cpu().numpy() * DBZ_PER_NORM).astype(np.float32))
        for k, q in enumerate(quants):
            quants[q].append(_dbz(mc["quantiles"][k, :, 0, :blind].cpu().numpy()))
        if progress is not None:
            progress(min(start + cfg.batch_size, idx.size), idx.size)

    def cat(v: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(v, 0)

    if not truth:
        raise BzpipeError(f"{dataset.uri}/{dataset.split}: no patches to evaluate")
    return EvalFields(indices=idx, truth=cat(truth), preds={m: cat(v) for m, v in preds.items()},
                      row_above=cat(row_above), base_above=cat(base_above), spread=cat(spread),
                      quantiles={q: cat(v) for q, v in quants.items()}, sites=coords["site"][idx],
                      times=coords["time_start"][idx], heights=heights, truth_max=cat(truth_max))


def build_mask(fields: EvalFields, spread_quantile: float | None
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The one evaluation mask ``(n, B, W)`` and the plain blind-zone mask, plus a description.

    With ``spread_quantile`` the pixels whose U-Net MC spread exceeds that
    quantile (over all blind-zone pixels of the split) are excluded for every
    method, the baselines included.
    """
    base = np.ones(fields.truth.shape, dtype=bool)
    if spread_quantile is None or fields.spread is None:
        valid = base
        cut = None
    else:
        valid = spread_exclusion_mask(fields.spread, spread_quantile, base)
        kept = fields.spread[valid]
        cut = float(kept.max()) if kept.size else None
    info = {"spread_exclusion_quantile": spread_quantile, "spread_cut_dbz": cut,
            "pixels": int(base.sum()), "valid": int(valid.sum()), "excluded": int(base.sum() - valid.sum()),
            "rule": ("blind zone, all pixels" if cut is None else
                     f"blind zone minus pixels with U-Net MC spread > {cut:.2f} dBZ "
                     f"(quantile {spread_quantile}); the same pixels are excluded for every method")}
    return valid, base, info


def score_settings(cfg: EvalConfig) -> ScoreSettings:
    return ScoreSettings(echo_threshold_dbz=cfg.echo_threshold_dbz,
                         cloud_fraction=cfg.cloud_fraction_threshold,
                         precip_threshold_dbz=cfg.precip_threshold_dbz, n_bootstrap=cfg.n_bootstrap,
                         confidence=cfg.confidence, seed=cfg.seed, spread_skill_bins=cfg.spread_skill_bins,
                         bootstrap_unit_hours=cfg.bootstrap_unit_hours)


def score_fields(fields: EvalFields, valid: np.ndarray, base: np.ndarray, cfg: EvalConfig) -> dict[str, Any]:
    """:func:`summarize` on the fields with the one mask (uncertainty on the plain blind zone)."""
    return summarize(fields.truth, fields.preds, fields.row_above, valid, fields.sites, fields.heights,
                     fields.base_above, score_settings(cfg), reference=UNET, spread=fields.spread,
                     quantiles=fields.quantiles, mean_key=UNET, uq_valid=base, times=fields.times)


def exclude_bright_patches(fields: EvalFields,
                           max_truth_dbz: float | None) -> tuple[EvalFields, dict[str, Any]]:
    """The authors' test-patch exclusion (``MAX_DBZ``): drop patches whose truth exceeds ``max_truth_dbz``
    anywhere in the patch, for every method; returns the kept fields and a description."""
    n = int(fields.truth.shape[0])
    if max_truth_dbz is None:
        return fields, {"max_truth_dbz": None, "excluded_patches": 0, "rule": "no test patch excluded"}
    keep = ~(fields.truth_max > max_truth_dbz)
    if not keep.any():
        raise BzpipeError(f"every one of the {n} evaluated patches has truth above max_truth_dbz="
                          f"{max_truth_dbz:g} dBZ: nothing left to score")
    info = {"max_truth_dbz": max_truth_dbz, "excluded_patches": int(n - keep.sum()),
            "rule": f"patches whose truth exceeds {max_truth_dbz:g} dBZ anywhere are excluded for every "
                    f"method (King et al.'s MAX_DBZ): {int(n - keep.sum())} of {n}"}
    return fields.subset(keep), info


def select_cases(fields: EvalFields, k: int) -> np.ndarray:
    """Positions (into ``fields``) of ``k`` instructive patches: most blind-zone echo, spread over sites."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    frac = np.mean(np.isfinite(fields.truth) & (fields.truth > -60), axis=(1, 2))
    order = np.argsort(-frac, kind="stable")
    chosen: list[int] = []
    for site in sorted(set(fields.sites.tolist())):  # the best case of each site first
        first = next((int(i) for i in order if fields.sites[i] == site), None)
        if first is not None and len(chosen) < k:
            chosen.append(first)
    chosen += [int(i) for i in order if int(i) not in chosen][:k - len(chosen)]
    return np.array(sorted(chosen[:k]), dtype=np.int64)


def case_curtains(fields: EvalFields, dataset: PatchDataset, positions: np.ndarray) -> dict[str, Any]:
    """Full curtains (dBZ ``(k, H, W)``) of truth and every method for the report's example cases."""
    if positions.size == 0:
        return {"positions": positions, "truth": np.zeros((0,) + (len(fields.heights), 0))}
    x = torch.stack(dataset.__getitems__(fields.indices[positions].tolist())).numpy()
    truth = _dbz(x[:, 0])                                                  # (k, H, W)
    b = fields.blind_rows
    out: dict[str, Any] = {"positions": positions, "sample": fields.indices[positions],
                           "sites": fields.sites[positions], "times": fields.times[positions],
                           "truth": truth, "methods": {}, "heights": fields.heights, "blind_rows": b}
    for m, f in fields.preds.items():
        full = truth.copy()
        full[:, :b] = f[positions]
        out["methods"][m] = full
    if fields.spread is not None:
        out["spread"] = fields.spread[positions]
    qs = sorted(fields.quantiles)
    if len(qs) >= 2:
        out["band"] = (qs[0], qs[-1], fields.quantiles[qs[0]][positions], fields.quantiles[qs[-1]][positions])
    return out


def run_evaluation(cfg: EvalConfig, store: Store | None = None, device: str | None = None,
                   progress: Callable[[int, int], None] | None = None, model_store: Store | None = None,
                   indices: np.ndarray | None = None) -> EvaluationResult:
    """Everything but the report: load, predict, mask, score, explain.

    ``model_store``: where the models are (default: ``store``, which holds the dataset), e.g. to
    score a demo model on another winter's build; ``indices``: the patches of the split to score
    (default: all, or ``cfg.max_patches`` spread evenly)."""
    store = store or Store(cfg.store_root)
    model_store = model_store or store
    dev = pick_device(device or cfg.device)
    model, meta = load_model(model_store, cfg.run_name, which=cfg.checkpoint, device=str(dev))
    dataset_check = check_trained_dataset(store, meta, cfg.dataset, allow_mismatch=cfg.allow_dataset_mismatch)
    if dataset_check["status"] != "match":
        log.warning("%s", dataset_check["note"])
    channels = list(meta.get("channels") or ["reflectivity"])
    dataset = PatchDataset(store, cfg.dataset, cfg.split, channels=channels,
                           normalization=meta.get("normalization") or None)
    if dataset.renormalized:
        log.info("%s: ERA-5 channels mapped from the dataset's normalization into the model's", dataset.uri)
        dataset_check["renormalized"] = True
    if meta.get("blind_zone_rows") not in (None, dataset.blind_zone_rows):
        log.warning("model trained with blind_zone_rows=%s, dataset has %s; evaluating on the dataset's",
                    meta.get("blind_zone_rows"), dataset.blind_zone_rows)
    idx = _select_indices(len(dataset), cfg.max_patches) if indices is None else np.asarray(indices)
    torch.manual_seed(cfg.seed)
    fields = predict_fields(model, dataset, cfg, dev, idx, progress)
    fields, exclusion = exclude_bright_patches(fields, cfg.max_truth_dbz)
    valid, base, mask_info = build_mask(fields, cfg.spread_exclusion_quantile)
    summary = score_fields(fields, valid, base, cfg)
    summary["mask"].update(mask_info)
    summary["patch_exclusion"] = exclusion
    summary["sample_selection"] = sample_selection(dataset.attrs)
    summary["dataset_check"] = dataset_check
    summary["seeds"] = score_seed_runs(cfg, model_store, dev, dataset, fields, valid, base, summary)
    cases = case_curtains(fields, dataset, select_cases(fields, cfg.n_cases))
    xai_out = None
    if cfg.xai:
        from bzpipe import xai

        pos = select_cases(fields, min(cfg.xai_samples, fields.truth.shape[0]))
        x = torch.stack(dataset.__getitems__(fields.indices[pos].tolist()))
        xai_out = xai.explain(model, x, dataset.blind_zone_rows, channels, ramp_rows=cfg.ramp_rows,
                              drop=cfg.drop_channel, seed=cfg.seed, device=dev)
        xai_out["sample"] = fields.indices[pos]
    return EvaluationResult(summary=summary, fields=fields, valid=valid, mask_info=mask_info,
                            model_meta=meta, cases=cases, xai=xai_out)


def score_seed_runs(cfg: EvalConfig, store: Store, dev: torch.device, dataset: PatchDataset,
                    fields: EvalFields, valid: np.ndarray, base: np.ndarray,
                    summary: dict[str, Any]) -> dict[str, Any]:
    """The headline scores of ``run_name`` and of every ``seed_runs`` model on the same patches,
    against the same baseline fills, with mean +- sd across the runs (:mod:`bzpipe.metrics.seeds`)."""
    values = [seeds.headline_values(to_json(summary), UNET)]
    quick = score_settings(cfg.model_copy(update={"n_bootstrap": 10}))
    for run in cfg.seed_runs:
        model_k, _ = load_model(store, run, which=cfg.checkpoint, device=str(dev))
        torch.manual_seed(cfg.seed)
        unet = predict_fields(model_k, dataset, cfg.model_copy(update={"baselines": ()}), dev, fields.indices)
        preds = {**fields.preds, UNET: unet.preds[UNET]}
        s_k = summarize(fields.truth, preds, fields.row_above, valid, fields.sites, fields.heights,
                        fields.base_above, quick, reference=UNET, times=fields.times)
        values.append(seeds.headline_values(to_json(s_k), UNET))
        log.info("seed run %s scored on the same %d patches", run, fields.truth.shape[0])
    return seeds.across_seeds(values, [cfg.run_name, *cfg.seed_runs])
