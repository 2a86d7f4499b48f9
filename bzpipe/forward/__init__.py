"""Forward operators: what another instrument would have measured of a curtain.

* :mod:`bzpipe.forward.cpr`: KaZR -> CloudSat-CPR (pure numpy; steps, constants and sources there);
* :mod:`bzpipe.forward.dataset`: the dataset-build hook that turns a colocated site-day into
  CPR-resolution columns (``build.forward_operator``), and the record models and granules carry.
"""

from bzpipe.forward.cpr import (
    CprView,
    add_noise,
    advected_distance,
    along_track_average,
    cpr_view,
    detect,
    footprint_weight,
    ifov_sigma,
    ka_to_w,
    noise_std_db,
    range_weighting,
    range_weights,
)

__all__ = ["CprView", "add_noise", "advected_distance", "along_track_average", "cpr_view", "detect",
           "footprint_weight", "ifov_sigma", "ka_to_w", "noise_std_db", "range_weighting", "range_weights"]
