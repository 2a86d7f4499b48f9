"""bzpipe: fill the near-surface radar blind zone with a UNet3+ inpainting model.

The library is plain functions on xarray Datasets and torch tensors; Prefect
orchestration lives in the top-level ``flows`` package and is never imported here.
"""

import os as _os

__version__ = "0.1.0"

# OpenMP threads that wait at the end of a parallel region sleep instead of spinning.  On a shared or
# oversubscribed CPU a spinning thread holds a core that the thread everyone waits for needs: there a
# 2-thread UNet3+ forward pass ran 2.6x faster passive than spinning (issue 14,
# benchmarks/bench_inference.py).
# Read by OpenMP when torch is first imported, so only effective when bzpipe comes first; never
# overrides a value set in the environment.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
