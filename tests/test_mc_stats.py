"""MC-dropout statistics per pass in dBZ (King et al. 2024): no-echo passes cannot erase echo."""

from __future__ import annotations

import numpy as np
import torch

from bzpipe.model import UNet3Plus, UNet3PlusConfig, mc_predict
from bzpipe.model.mc_stats import aggregate_passes, pass_dbz
from bzpipe.schema import DBZ_PER_NORM, dbz_to_norm, norm_to_dbz


def _norm(dbz: float) -> float:
    return float(dbz_to_norm(np.array([dbz]))[0])


def test_clear_passes_do_not_erase_echo():
    """The issue's example: 25 clear passes and 25 at -30 dBZ -> -45 dBZ (echo), not no echo."""
    s = torch.full((50, 1, 1, 1, 1), -1.0)
    s[25:] = _norm(-30.0)
    r = aggregate_passes(s, (0.05, 0.5, 0.95))
    assert float(r["mean_dbz"]) == -45.0 and float(r["std_dbz"]) == 15.0
    assert float(r["echo_fraction"]) == 0.5
    assert float(norm_to_dbz(r["mean"].numpy()).ravel()[0]) == -45.0          # normalized contract
    assert float(r["std"]) * DBZ_PER_NORM == 15.0                            # std * 60 = dBZ spread
    np.testing.assert_allclose(r["quantiles_dbz"].ravel().numpy(), [-60.0, -45.0, -30.0])
    # averaging normalized outputs instead (-1 = no echo) would give -60 dBZ: no echo
    assert np.isnan(norm_to_dbz(s.mean(0).numpy()).ravel()[0]) or norm_to_dbz(s.mean(0).numpy()).ravel()[0] <= -60


def test_per_pass_conversion_and_all_clear():
    x = torch.tensor([-1.0, -0.7, -0.5, 0.0, 1.0, 1.4])
    np.testing.assert_allclose(pass_dbz(x).numpy(), [-60.0, -60.0, -60.0, -30.0, 30.0, 30.0])
    clear = aggregate_passes(torch.full((8, 2, 3), -0.9))
    assert torch.all(clear["mean"] == -1.0) and torch.all(clear["mean_dbz"] == -60.0)
    assert torch.all(clear["std_dbz"] == 0.0) and torch.all(clear["echo_fraction"] == 0.0)
    one = torch.full((10, 1), -1.0)
    one[3] = _norm(-20.0)                   # a single pass with echo: echo in the mean, as in the paper
    r = aggregate_passes(one)
    assert float(r["mean_dbz"]) == -56.0 and float(r["mean"]) > -1.0


def test_mc_predict_reports_spread_in_dbz():
    torch.manual_seed(1)
    m = UNet3Plus(UNet3PlusConfig(in_channels=2, filters=(4, 8, 8, 8, 8), dropout=0.5, output_bias=0.2))
    x = torch.randn(2, 2, 32, 32)
    torch.manual_seed(0)
    r = mc_predict(m, x, n_passes=9, quantiles=(0.5,))
    torch.manual_seed(0)
    r2 = mc_predict(m, x, n_passes=9, quantiles=(0.5,))
    for k in ("mean_dbz", "std_dbz", "quantiles_dbz", "mean", "std"):
        assert torch.equal(r[k], r2[k])                                     # seeded: reproducible
    torch.testing.assert_close(r["std"] * DBZ_PER_NORM, r["std_dbz"])
    assert float(r["std_dbz"].max()) > 0.1 and r["quantiles_dbz"].shape == (1, 2, 1, 32, 32)
