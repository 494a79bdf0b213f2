"""DeepNorm's constants against the DeepNet paper's formulas (Wang et al. 2022, Figure 2),
written out here per stack kind, and its initialiser's variance (Xavier normal times β).

Tolerances: 1e-12 on the constants; the sampled variance within 5% (a 256×256 kernel).
"""

import numpy as np
import pytest

from keraformer.normalization import deepnorm_constants, deepnorm_initializer


@pytest.mark.parametrize("n", [1, 6, 12, 48, 1000])
def test_encoder_only(n):
    alpha, beta = deepnorm_constants(encoder_layers=n)["encoder"]
    assert alpha == pytest.approx((2 * n) ** (1 / 4), rel=1e-12)
    assert beta == pytest.approx((8 * n) ** (-1 / 4), rel=1e-12)


@pytest.mark.parametrize("m", [1, 24, 96])
def test_decoder_only(m):
    assert deepnorm_constants(decoder_layers=m) == {
        "decoder": pytest.approx(((2 * m) ** (1 / 4), (8 * m) ** (-1 / 4)), rel=1e-12)}


@pytest.mark.parametrize("n, m", [(6, 6), (18, 18), (100, 100), (200, 12)])
def test_encoder_decoder(n, m):
    constants = deepnorm_constants(encoder_layers=n, decoder_layers=m)
    assert constants["encoder"] == pytest.approx(
        (0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16)), rel=1e-12)
    assert constants["decoder"] == pytest.approx(
        ((3 * m) ** (1 / 4), (12 * m) ** (-1 / 4)), rel=1e-12)


def test_known_values():
    """Worked by hand: 12 encoder layers give α = 24^¼ ≈ 2.2134, β = 96^-¼ ≈ 0.3195."""
    alpha, beta = deepnorm_constants(encoder_layers=12)["encoder"]
    assert round(alpha, 4) == 2.2134 and round(beta, 4) == 0.3195


@pytest.mark.parametrize("kwargs, error, name", [
    ({}, ValueError, "both 0"), ({"encoder_layers": -1}, ValueError, "encoder_layers"),
    ({"decoder_layers": 2.0}, TypeError, "decoder_layers"),
    ({"encoder_layers": True}, TypeError, "encoder_layers")])
def test_bad_layer_counts_are_refused(kwargs, error, name):
    with pytest.raises(error, match=name):
        deepnorm_constants(**kwargs)


def test_initializer_is_xavier_normal_times_beta():
    beta = 0.3
    w = np.asarray(deepnorm_initializer(beta, seed=0)((256, 256)))
    want = beta ** 2 * 2 / (256 + 256)
    assert abs(w.var() / want - 1) < 0.05
    assert np.abs(w).max() > 3 * np.sqrt(want)  # untruncated
