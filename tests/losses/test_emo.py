"""EMO loss against an independent NumPy implementation of Ren et al. 2023's formula."""

import keras
import numpy as np
import pytest
from keras import ops

from keraformer.losses import EMOLoss, emo_loss

TOL = 1e-6  # float32 evaluation vs float64 reference


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_emo_parts(y, logits, emb):
    """Per-token (CE, emo) in float64, straight from the formulas."""
    logits = logits.astype("float64")
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    p = np_softmax(logits)
    ce = -np.log(np.take_along_axis(p, y[..., None], -1)[..., 0])
    similarity = unit @ unit.T                        # cos(e_a, e_b)
    emo = 1.0 - np.einsum("...v,...v->...", p, similarity[y])
    return ce, emo


def np_emo_loss(y, logits, emb, mask=None, ignore_index=None, sample_weight=None,
                mode="combined"):
    keep = np.ones(y.shape) if mask is None else mask.astype("float64")
    if ignore_index is not None:
        keep = keep * (y != ignore_index)
    safe_y = np.where(y == ignore_index, 0, y) if ignore_index is not None else y
    ce, emo = np_emo_parts(safe_y, logits, emb)
    token = emo if mode == "emo" else 0.5 * (ce + ce)  # value: sg(ce/emo)*emo == ce
    weight = keep
    if sample_weight is not None:
        sw = sample_weight.reshape(sample_weight.shape + (1,) * (y.ndim - sample_weight.ndim))
        weight = keep * sw
    return (token * weight).sum() / max(keep.sum(), 1.0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    vocab, dim = 11, 6
    return dict(
        emb=rng.normal(size=(vocab, dim)).astype("float32"),
        logits=rng.normal(size=(3, 5, vocab)).astype("float32") * 2,
        y=rng.integers(0, vocab, size=(3, 5)),
        mask=rng.random((3, 5)) > 0.3,
        sw=rng.random(3).astype("float32"),
    )


@pytest.mark.parametrize("mode", ["combined", "emo"])
def test_matches_numpy_with_mask_ignore_index_and_weights(data, mode):
    y = data["y"].copy()
    y[0, :2] = -100
    got = emo_loss(y, data["logits"], data["emb"], mask=data["mask"], ignore_index=-100,
                   sample_weight=data["sw"], mode=mode)
    want = np_emo_loss(y, data["logits"], data["emb"], data["mask"], -100, data["sw"], mode)
    np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=TOL, atol=TOL)


def test_pure_emo_per_token_matches_numpy_for_rank_2_and_4_logits(data):
    for shape in [(7,), (2, 2, 3)]:
        rng = np.random.default_rng(len(shape))
        logits = rng.normal(size=shape + (11,)).astype("float32")
        y = rng.integers(0, 11, size=shape)
        _, emo = np_emo_parts(y, logits, data["emb"])
        got = emo_loss(y, logits, data["emb"], mode="emo")
        np.testing.assert_allclose(ops.convert_to_numpy(got), emo.mean(), rtol=TOL, atol=TOL)


def test_emo_is_zero_for_a_confident_correct_prediction(data):
    y = np.array([1, 4])
    logits = np.full((2, 11), -50.0, "float32")
    logits[[0, 1], y] = 50.0
    got = ops.convert_to_numpy(emo_loss(y, logits, data["emb"], mode="emo"))
    assert abs(got) < 1e-6


def test_combined_gradient_equals_finite_differences(data, gradients, numeric_gradient):
    """grad = 0.5·(∇CE + (CE/emo)·∇emo), each ∇ by central differences in float64."""
    y, emb = data["y"][:2, :3], data["emb"]
    logits = data["logits"][:2, :3].astype("float64")
    keep = data["mask"][:2, :3].astype("float64")
    count = keep.sum()
    ce, emo = np_emo_parts(y, logits, emb)
    ratio = ce / emo  # held fixed: the stop-gradient factor
    grad_ce = numeric_gradient(lambda z: (np_emo_parts(y, z, emb)[0] * keep).sum(), logits)
    grad_emo = numeric_gradient(lambda z: (np_emo_parts(y, z, emb)[1] * keep * ratio).sum(),
                                logits)
    want = 0.5 * (grad_ce + grad_emo) / count
    [got] = gradients(lambda z: emo_loss(y, z, emb, mask=keep), logits.astype("float32"))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_pure_emo_gradient_equals_finite_differences(data, gradients, numeric_gradient):
    y, emb = data["y"][:1], data["emb"]
    logits = data["logits"][:1].astype("float64")
    want = numeric_gradient(lambda z: np_emo_parts(y, z, emb)[1].mean(), logits)
    [got] = gradients(lambda z: emo_loss(y, z, emb, mode="emo"), logits.astype("float32"))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_bad_arguments_raise_clear_errors(data):
    with pytest.raises(ValueError, match="mode"):
        emo_loss(data["y"], data["logits"], data["emb"], mode="kl")
    with pytest.raises(ValueError, match="cost_embeddings"):
        emo_loss(data["y"], data["logits"], data["emb"][:5])
    with pytest.raises(ValueError, match="y_true"):
        emo_loss(data["y"][:, :2], data["logits"], data["emb"])
    with pytest.raises(ValueError, match="cost_embeddings"):
        EMOLoss(np.zeros(11))


def test_loss_object_in_compile_fit_evaluate_and_round_trip(data):
    vocab = data["emb"].shape[0]
    loss = EMOLoss(data["emb"], ignore_index=0)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, EMOLoss)
    assert restored.get_config() == loss.get_config()
    assert EMOLoss.from_config(loss.get_config()).ignore_index == 0

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 5, 4)).astype("float32")
    y = rng.integers(0, vocab, size=(8, 5))
    y[:, -2:] = 0  # padding labels, ignored
    model = keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(vocab)])
    model.compile(optimizer="sgd", loss=restored)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    evaluated = model.evaluate(x, y, batch_size=8, verbose=0)
    logits = model.predict(x, verbose=0)
    want = np_emo_loss(y, logits, data["emb"], ignore_index=0)
    np.testing.assert_allclose(evaluated, want, rtol=1e-5, atol=1e-6)
