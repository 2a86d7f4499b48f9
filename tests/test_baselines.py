"""REP, MAR and OpenCV blind-zone fills against hand-computed fields."""

from __future__ import annotations

import numpy as np
import pytest

from bzpipe import baselines as bl
from bzpipe.schema import NO_ECHO


def _naive_marching(image: np.ndarray, mask: np.ndarray, window: int) -> np.ndarray:
    """Literal transcription of the algorithm: pixel loop, np.pad(reflect) windows."""
    img = image.astype(np.float64).copy()
    m = mask.astype(float).copy()
    h = window // 2
    while m.any():
        pm = np.pad(m, 1, mode="reflect")
        edge = (pm[1:-1, 1:-1] > 0) & ((pm[:-2, 1:-1] + pm[2:, 1:-1] + pm[1:-1, 2:] + pm[1:-1, :-2]) < 4)
        ps = np.pad(img, h, mode="reflect")
        pk = 1.0 - np.pad(m, h, mode="reflect")
        new = img.copy()
        for i, j in zip(*np.nonzero(edge)):
            win_s, win_k = ps[i:i + window, j:j + window], pk[i:i + window, j:j + window]
            new[i, j] = np.sum(win_s * win_k) / np.sum(win_k)
        img = new
        m[edge] = 0
    return img


def test_repeat_copies_first_row_above_blind_zone():
    x = np.arange(20, dtype=np.float32).reshape(5, 4) / 40.0  # rows 0..4, values in [0, 0.5)
    out = bl.repeat_fill(x, 2)
    np.testing.assert_array_equal(out[0], x[2])
    np.testing.assert_array_equal(out[1], x[2])
    np.testing.assert_array_equal(out[2:], x[2:])
    assert x[0, 0] == 0.0  # input untouched


def test_repeat_works_on_leading_sample_dims():
    x = np.random.default_rng(0).uniform(-0.5, 1, size=(3, 2, 6, 5)).astype(np.float32)
    out = bl.repeat_fill(x, 3)
    for r in range(3):
        np.testing.assert_array_equal(out[..., r, :], x[..., 3, :])


def test_marching_average_hand_example_window3():
    # one blind row; row 1 = [0, .3, .6]; mirrored window around (0, j) sees row 1 twice
    x = np.array([[9, 9, 9], [0.0, 0.3, 0.6], [0.1, 0.1, 0.1], [0.2, 0.2, 0.2]], dtype=np.float32)
    out = bl.marching_average_fill(x, 1, window=3)
    np.testing.assert_allclose(out[0], [(0 + 2 * 0.3) / 3, 0.3, (0.3 + 0.6 + 0.3) / 3], atol=1e-6)
    np.testing.assert_array_equal(out[1:], x[1:])


def test_marching_average_snaps_mostly_clear_windows_to_no_echo():
    x = np.full((4, 3), 0.2, dtype=np.float32)
    x[1] = [-1.0, -1.0, 0.2]
    out = bl.marching_average_fill(x, 1, window=3)
    # (0,0): (-1 + 2(-1))/3 = -1; (0,1): (-1 - 1 + .2)/3 = -0.6 -> no echo; (0,2): (-1 + .2 - 1)/3 = -0.6
    np.testing.assert_array_equal(out[0], [NO_ECHO, NO_ECHO, NO_ECHO])


def test_marching_average_matches_literal_algorithm():
    rng = np.random.default_rng(3)
    img = rng.uniform(-0.5, 1.0, size=(20, 15)).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[:6] = True
    expected = _naive_marching(img, mask, 5)
    got = bl.marching_average_image(img, mask, 5)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # a non-rectangular hole (inner region) as well
    mask2 = np.zeros(img.shape, bool)
    mask2[5:12, 3:9] = True
    np.testing.assert_allclose(bl.marching_average_image(img, mask2, 3), _naive_marching(img, mask2, 3),
                               atol=1e-5)


def test_marching_average_constant_field_and_default_window():
    x = np.full((2, 32, 16), 0.4, dtype=np.float32)
    out = bl.marching_average_fill(x, 8)
    np.testing.assert_allclose(out, 0.4, atol=1e-6)


@pytest.mark.parametrize("method", ["telea", "ns"])
@pytest.mark.parametrize("as_uint8", [False, True])
def test_opencv_fill_constant_and_clear_fields(method, as_uint8):
    x = np.full((24, 20), 0.25, dtype=np.float32)
    out = bl.opencv_fill(x, 6, method, as_uint8=as_uint8)
    # OpenCV's Telea errs by ~1-2 grey levels (2/255 normalized each) even on a constant field
    np.testing.assert_allclose(out[:6], 0.25, atol=0.02)
    np.testing.assert_array_equal(out[6:], x[6:])
    clear = np.full((24, 20), NO_ECHO, dtype=np.float32)
    np.testing.assert_array_equal(bl.opencv_fill(clear, 6, method, as_uint8=as_uint8), clear)


@pytest.mark.parametrize("fill", [bl.telea_fill, bl.navier_stokes_fill])
def test_opencv_fill_continues_column_structure(fill):
    # columns differ, rows identical above the blind zone: the row just below should follow the columns
    cols = np.linspace(-0.4, 0.9, 20, dtype=np.float32)
    x = np.tile(cols, (24, 1))
    x[:6] = 5.0  # garbage in the blind zone must not leak
    out = fill(x, 6)
    assert np.max(np.abs(out[5] - cols)) < 0.2  # OpenCV extrapolates worst at the image's side edges
    # away from the side edges the fill is within ~1 dBZ; on the raw [-1, 1] range Telea's +-1 grey-level
    # artefacts would make this a whole unit (60 dBZ): the 0..255 scaling is what keeps it small
    assert np.max(np.abs(out[5, 3:-3] - cols[3:-3])) < 0.03
    assert out[:6].max() <= 1.0


def test_run_baselines_and_errors():
    x = np.random.default_rng(1).uniform(-0.5, 1, size=(2, 16, 12)).astype(np.float32)
    res = bl.run_baselines(x, 4)
    assert set(res) == {"REP", "MAR", "TELEA", "NS"}
    for v in res.values():
        assert v.shape == x.shape and v.dtype == np.float32
        np.testing.assert_array_equal(v[..., 4:, :], x[..., 4:, :])
        assert np.all((v[..., :4, :] == NO_ECHO) | ((v[..., :4, :] >= -0.5) & (v[..., :4, :] <= 1.0)))
    with pytest.raises(ValueError, match="blind_rows"):
        bl.repeat_fill(x, 16)
    with pytest.raises(ValueError, match="unknown"):
        bl.run_baselines(x, 4, methods=("XYZ",))
    with pytest.raises(ValueError, match="odd"):
        bl.marching_average_fill(x, 4, window=4)
