"""bzpipe: fill the near-surface radar blind zone with a UNet3+ inpainting model.

The library is plain functions on xarray Datasets and torch tensors; Prefect
orchestration lives in the top-level ``flows`` package and is never imported here.
"""

__version__ = "0.1.0"
