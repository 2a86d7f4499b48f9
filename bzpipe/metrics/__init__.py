"""Scores of blind-zone fills, in dBZ: small pure numpy functions.

See :mod:`bzpipe.metrics.pointwise` for the conventions every metric follows
(NaN = no echo, the shared ``valid`` mask, one value per patch).
"""

from bzpipe.metrics.bootstrap import Interval, bootstrap_indices, bootstrap_mean, interval
from bzpipe.metrics.contingency import (ContingencyTable, cloud_presence, contingency_table,
                                        csi_from_pod_sr, shallow_snowfall, virga)
from bzpipe.metrics.distributions import emd, histograms, lowest_echo_height, pdf
from bzpipe.metrics.pointwise import bias, dice, fill_no_echo, has_echo, mae, rmse
from bzpipe.metrics.spectra import mean_psd, to_db, vertical_psd
from bzpipe.metrics.uncertainty import (central_intervals, interval_coverage, spread_exclusion_mask,
                                        spread_skill, spread_skill_ratio)

__all__ = [
    "ContingencyTable", "Interval", "bias", "bootstrap_indices", "bootstrap_mean", "central_intervals",
    "cloud_presence", "contingency_table", "csi_from_pod_sr", "dice", "emd", "fill_no_echo", "has_echo",
    "histograms", "interval", "interval_coverage", "lowest_echo_height", "mae", "mean_psd", "pdf", "rmse",
    "shallow_snowfall", "spread_exclusion_mask", "spread_skill", "spread_skill_ratio", "to_db",
    "vertical_psd", "virga",
]
