#!/usr/bin/env bash
# The GPU figures of issue 14 in one short run (< 5 minutes on one H100-class GPU; not a test).
#
#   bash benchmarks/gpu_check.sh                 # results in $OUT (if set) or benchmarks/gpu_results/
#
# Needs the project environment with a CUDA build of torch (see infra/run.sh: BZPIPE_TORCH /
# BZPIPE_TORCH_INDEX_URL) and one visible GPU.  Each step has its own time limit, so a slow or
# failing step still leaves the others' figures.  What it measures, against issue 14:
#   1. bench_inference, fp32 and bf16 (and fp16): full vs band-limited MC passes on the GPU,
#      forward passes/s (acceptance: >= 5,000 passes/s on an H100-class device), exactness of
#      the band path on CUDA (max abs diff, same masks), bf16/fp16 vs fp32 mean |delta| in dBZ on
#      the blind zone (acceptance: <= 0.5 dBZ);
#   2. bench_cloudsat: one ~37,000-profile granule at N = 50, end to end, band vs full path, the MC
#      batch filling the GPU (infer.batch_size = 0; acceptance: <= 8 s for the band path);
#   3. bench_loader: the training loader (sharded Zarr, workers, pinned memory) against the
#      training step rate at batch 64 measured on the same GPU (the loader must not limit it).
# Paste the summary lines into the README's Benchmarks table with the device named.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${BZPIPE_PYTHON_BIN:-.venv/bin/python}
RES=${OUT:-benchmarks/gpu_results}
mkdir -p "$RES"
LOG="$RES/gpu_check.log"
: > "$LOG"

step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 12
  echo "== $name: rc ${PIPESTATUS[0]} in $((SECONDS - t0)) s" | tee -a "$LOG"
}

"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import torch
assert torch.cuda.is_available(), "no CUDA device: this script measures GPU figures"
p = torch.cuda.get_device_properties(0)
print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
EOF

for dt in fp32 bf16 fp16; do
  step "inference $dt" 45 "$PY" benchmarks/bench_inference.py --device cuda --dtype "$dt" --windows 64 --passes 50 \
    --batch 512 --band-batch 3200 --rounds 5 --json "$RES/inference_$dt.json"
done
step "granule" 120 "$PY" benchmarks/bench_cloudsat.py --device cuda --paths band,full --batch 0 --no-plot \
  --json "$RES/cloudsat.json"
step "loader" 45 "$PY" benchmarks/bench_loader.py --device cuda --samples 2048 --batches 12 --workers 0,4,8 \
  --repeats 2 --json "$RES/loader.json"

echo "== summary" | tee -a "$LOG"
"$PY" - "$RES" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
res = Path(sys.argv[1])
def load(name):
    f = res / name
    return json.loads(f.read_text()) if f.exists() else None
for dt in ("fp32", "bf16", "fp16"):
    r = load(f"inference_{dt}.json")
    if r:
        d = r.get("mean_abs_dbz_vs_fp32", {})
        print(f"inference {dt}: full {r['full']['passes_per_s']:.0f} passes/s, band {r['band']['passes_per_s']:.0f} "
              f"passes/s ({r['speedup']:.2f}x; flops {r['flops_ratio']:.2f}x), max abs diff {r['max_abs_diff']:.1e}"
              + (f", vs fp32 {d.get('band', float('nan')):.3f} dBZ (band) {d.get('full', float('nan')):.3f} (full)" if d else ""))
c = load("cloudsat.json")
if c:
    for path, r in c["paths"].items():
        print(f"granule {r['profiles']} profiles N = {r['passes']}, {path}: {r['total_s']:.1f} s end to end "
              f"({', '.join(f'{k} {v:.1f}' for k, v in r['seconds'].items())})")
l = load("loader.json")
if l:
    print(f"training step rate at batch 64: {l['step_rate']:.0f} samples/s ({l['step_rate_source']})")
    for row in l["rows"]:
        print(f"loader {row['layout']} workers {row['workers']}: {row['samples_per_s']:.0f} samples/s "
              f"({row['vs_step']:.2f}x the step rate)")
EOF
