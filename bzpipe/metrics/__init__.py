"""Scores of blind-zone fills, in dBZ: small pure numpy functions.

See :mod:`bzpipe.metrics.pointwise` for the conventions every metric follows
(NaN = no echo, the shared ``valid`` mask, one value per patch).
"""

from bzpipe.metrics.bootstrap import (
                                      Interval,
                                      block_weights,
                                      bootstrap_indices,
                                      bootstrap_mean,
                                      interval,
                                      unit_labels,
                                      weighted_means,
)
from bzpipe.metrics.contingency import (
                                      ContingencyTable,
                                      cloud_presence,
                                      contingency_table,
                                      csi_from_pod_sr,
                                      shallow_snowfall,
                                      virga,
)
from bzpipe.metrics.distributions import emd, histograms, lowest_echo_height, pdf
from bzpipe.metrics.pointwise import bias, dice, fill_no_echo, has_echo, mae, rmse
from bzpipe.metrics.spectra import mean_db, periodogram, to_db, vertical_spectrum_db
from bzpipe.metrics.uncertainty import (
                                      central_intervals,
                                      interval_coverage,
                                      spread_exclusion_mask,
                                      spread_skill,
                                      spread_skill_ratio,
)

__all__ = [
    "ContingencyTable", "Interval", "bias", "block_weights", "bootstrap_indices", "bootstrap_mean",
    "central_intervals", "cloud_presence", "contingency_table", "csi_from_pod_sr", "dice", "emd",
    "fill_no_echo",
    "has_echo", "histograms", "interval", "interval_coverage", "lowest_echo_height", "mae", "mean_db", "pdf",
    "periodogram", "rmse", "shallow_snowfall", "spread_exclusion_mask", "spread_skill", "spread_skill_ratio",
    "to_db", "unit_labels", "vertical_spectrum_db", "virga", "weighted_means",
]
