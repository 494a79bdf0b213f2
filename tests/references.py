"""Float64 NumPy references written from the formulas, and the invariance checks the attention
tests share (causal leak, padding), so each test file states only what it checks; and the
runner of bert4keras 0.11.5 itself in a subprocess (``run_bert4keras``).

Import as ``from tests.references import ...`` (pytest runs from the repository root).
"""

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from keraformer import checkpoints


# -- inputs -----------------------------------------------------------------------------------

def random_qkv(seed, batch, q_len, k_len, heads, d, e):
    """float32 ``q (batch, q_len, heads, d)``, ``k (batch, k_len, heads, d)``, ``v (…, e)``."""
    rng = np.random.RandomState(seed)
    return (rng.randn(batch, q_len, heads, d).astype("float32"),
            rng.randn(batch, k_len, heads, d).astype("float32"),
            rng.randn(batch, k_len, heads, e).astype("float32"))


def random_keep(seed, batch, length):
    """Right-padded boolean key mask ``(batch, length)``; real lengths >= 1, row 0 full."""
    lengths = np.random.RandomState(seed).randint(1, length + 1, batch)
    lengths[0] = length
    return np.arange(length)[None] < lengths[:, None]


def causal_allowed(q_len, k_len):
    """``(q_len, k_len)``: query ``i`` sees keys ``j <= i + k_len - q_len``."""
    return np.arange(k_len)[None] <= np.arange(q_len)[:, None] + (k_len - q_len)


def allowed_keys(batch, q_len, k_len, keep=None, causal=False):
    """Boolean ``(batch, 1, q_len, k_len)`` from a key mask ``(batch, k_len)`` and ``causal``."""
    keep = np.ones((batch, k_len), bool) if keep is None else np.asarray(keep, bool)
    allowed = np.broadcast_to(keep[:, None, None, :], (batch, 1, q_len, k_len))
    return allowed & causal_allowed(q_len, k_len) if causal else allowed


# -- positions --------------------------------------------------------------------------------

def numpy_rope(x, positions=None, base=10000.0):
    """RoPE with interleaved pairs (RoFormer): pair ``(x_2i, x_2i+1)`` at position ``m`` is
    rotated by ``m·base^(-2i/d)``; ``x`` is ``(batch, length, heads, d)`` or
    ``(batch, length, d)``."""
    x = np.asarray(x, "float64")
    length, d = x.shape[1], x.shape[-1]
    positions = np.arange(length) if positions is None else np.asarray(positions)
    angles = positions[:, None] * base ** (-2.0 * np.arange(d // 2) / d)   # (length, d/2)
    angles = angles.reshape((1, length) + (1,) * (x.ndim - 3) + (d // 2,))
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(angles) - odd * np.sin(angles)
    out[..., 1::2] = even * np.sin(angles) + odd * np.cos(angles)
    return out


def window_allowed(q_len, k_len, window):
    """``(q_len, k_len)``: query ``i`` (at position ``i + k_len - q_len``) sees key ``j`` when
    ``|i + k_len - q_len - j| < window``."""
    rows = np.arange(q_len)[:, None] + (k_len - q_len)
    return np.abs(rows - np.arange(k_len)[None]) < window


def rectified_position(r, window, leak=None):
    """ReRoPE's relative position: ``r`` if ``|r| < window``, else ``±window`` (``leak=None``)
    or ``±(window + (|r| - window)/leak)`` (Leaky ReRoPE)."""
    if abs(r) < window:
        return float(r)
    far = window if leak is None else window + (abs(r) - window) / leak
    return math.copysign(far, r)


def numpy_rerope_scores(q, k, window, leak=None, q_positions=None, k_positions=None):
    """``(batch, heads, q_len, k_len)`` float64 products pair by pair: the rectified relative
    position ``ρ`` of query position ``m`` and key position ``n`` is built explicitly
    (:func:`rectified_position` of ``m − n``) and the product is ``⟨R_ρ q_m, k_n⟩``, which for
    ``ρ = m − n`` is RoPE's ``⟨R_m q, R_n k⟩``. Positions ``(length,)`` or ``(batch, length)``;
    defaults as in cached decoding (queries are the last ``q_len`` keys)."""
    q, k = np.asarray(q, "float64"), np.asarray(k, "float64")
    batch, q_len, heads, d = q.shape
    k_len = k.shape[1]
    q_positions = np.broadcast_to(np.arange(q_len) + k_len - q_len if q_positions is None
                                  else q_positions, (batch, q_len))
    k_positions = np.broadcast_to(np.arange(k_len) if k_positions is None else k_positions,
                                  (batch, k_len))
    out = np.zeros((batch, heads, q_len, k_len))
    for b, i, j in np.ndindex(batch, q_len, k_len):
        rho = rectified_position(q_positions[b, i] - k_positions[b, j], window, leak)
        rotated = numpy_rope(q[b:b + 1, i:i + 1], positions=np.array([rho]))[0, 0]  # (heads, d)
        out[b, :, i, j] = np.sum(rotated * k[b, j], axis=-1)
    return out


# -- task heads (bert4keras' GlobalPointer, CRF and multi-label loss) --------------------------

def numpy_global_pointer(x, weights, heads, head_size, efficient=False, rope=True, mask=None,
                         tril=True):
    """Span scores ``(batch, heads, length, length)`` (float64) of hidden states ``x (batch,
    length, hidden)`` from the formulas: GlobalPointer projects to per-type start/end vectors
    (first/last ``head_size`` features of each type's ``2·head_size``); the efficient form to
    shared start (even features) and end (odd) vectors plus per-type biases ``q = p W_q +
    b_q``, halved: ``q[n, 2h]`` for the end, ``q[m, 2h+1]`` for the start. Scores are
    ``<RoPE(s_m), RoPE(e_n)> / sqrt(head_size)``; ``-inf`` where ``mask`` is False at the start
    or the end and, with ``tril``, where the end precedes the start. ``weights``: the
    layer's ``get_weights()`` (kernels, then biases when there are, in layer order)."""
    x = np.asarray(x, "float64")
    w = [np.asarray(v, "float64") for v in weights]
    batch, length = x.shape[:2]
    rotate = numpy_rope if rope else (lambda v: v)
    if efficient:
        p_kernel, p_bias, q_kernel, q_bias = w if len(w) == 4 else (w[0], 0.0, w[1], 0.0)
        p = x @ p_kernel + p_bias
        starts, ends = rotate(p[..., 0::2]), rotate(p[..., 1::2])
        scores = np.einsum("bmd,bnd->bmn", starts, ends)[:, None] / np.sqrt(head_size)
        q = (p @ q_kernel + q_bias) / 2
        scores = scores + q[:, :, 0::2].transpose(0, 2, 1)[:, :, None, :] \
            + q[:, :, 1::2].transpose(0, 2, 1)[:, :, :, None]
    else:
        kernel, bias = w if len(w) == 2 else (w[0], 0.0)
        h = (x @ kernel + bias).reshape(batch, length, heads, 2 * head_size)
        starts, ends = rotate(h[..., :head_size]), rotate(h[..., head_size:])
        scores = np.einsum("bmhd,bnhd->bhmn", starts, ends) / np.sqrt(head_size)
    keep = np.ones((batch, length, length), bool)
    if mask is not None:
        mask = np.asarray(mask, bool)
        keep &= mask[:, :, None] & mask[:, None, :]
    if tril:
        keep &= np.arange(length)[None, :] >= np.arange(length)[:, None]
    return np.where(keep[:, None], scores, -np.inf)


def numpy_multilabel_crossentropy(y_true, y_pred):
    """``log(1 + Σ (1-y) e^s) + log(1 + Σ y e^-s)`` over the last axis (float64), leaving out
    the entries whose score is ``-inf``."""
    t, s = np.asarray(y_true, "float64"), np.asarray(y_pred, "float64")
    valid = ~np.isneginf(s)
    s = np.where(valid, s, 0.0)

    def log1p_sum(weights, exponents):  # log(1 + Σ w e^x), stable for large x
        exponents = np.where(valid & (weights > 0), exponents, -np.inf)
        top = np.maximum(exponents.max(-1, keepdims=True), 0.0)
        total = np.exp(-top[..., 0]) + (np.where(weights > 0, weights, 0.0)
                                        * np.exp(exponents - top)).sum(-1)
        return top[..., 0] + np.log(total)

    return log1p_sum(1 - t, s) + log1p_sum(t, -s)


def crf_path_scores(emissions, transitions, starts=None, ends=None):
    """Every label path's score under a linear-chain CRF (float64) by brute force, ``{path:
    score}``: emissions ``(length, labels)`` of its labels plus ``transitions[a, b]`` between
    consecutive labels; only paths beginning in ``starts`` and ending in ``ends`` (None: any)."""
    emissions = np.asarray(emissions, "float64")
    transitions = np.asarray(transitions, "float64")
    scores = {}
    for path in itertools.product(range(emissions.shape[-1]), repeat=len(emissions)):
        if (starts is not None and path[0] not in starts) or \
                (ends is not None and path[-1] not in ends):
            continue
        scores[path] = sum(emissions[t, y] for t, y in enumerate(path)) + sum(
            transitions[a, b] for a, b in zip(path[:-1], path[1:]))
    return scores


# -- attention --------------------------------------------------------------------------------

def numpy_softmax_attention(q, k, v, allowed=None, bias=None, scale=None, entropy_base=None,
                            scores=None):
    """Query by query, softmax over the allowed keys; ``allowed`` broadcasts to
    ``(batch, heads, q_len, k_len)``; ``entropy_base`` multiplies the logits by
    ``log(n)/log(base)``, ``n`` the allowed keys. A query with no allowed key gives zeros.
    ``scores`` ``(batch, heads, q_len, k_len)`` replace the products ``q·k``."""
    q, k, v = (np.asarray(x, "float64") for x in (q, k, v))
    batch, q_len, heads, d = q.shape
    k_len = k.shape[1]
    scale = 1 / math.sqrt(d) if scale is None else scale
    allowed = np.broadcast_to(np.ones((1, 1, 1, 1), bool) if allowed is None else allowed,
                              (batch, heads, q_len, k_len))
    bias = np.broadcast_to(0.0 if bias is None else np.asarray(bias, "float64"),
                           (batch, heads, q_len, k_len))
    out = np.zeros((batch, q_len, heads, v.shape[-1]))
    for b, h, i in np.ndindex(batch, heads, q_len):
        keys = np.flatnonzero(allowed[b, h, i])
        if not len(keys):
            continue
        logits = np.array([q[b, i, h] @ k[b, j, h] if scores is None else scores[b, h, i, j]
                           for j in keys]) * scale
        if entropy_base:
            logits = logits * math.log(len(keys)) / math.log(entropy_base)
        logits = logits + bias[b, h, i, keys]
        w = np.exp(logits - logits.max())
        out[b, i, h] = w @ v[b, keys, h] / w.sum()
    return out


def elu_plus_one(x):
    return np.where(x > 0, x + 1.0, np.exp(x))


def numpy_linear_attention(q, k, v, keep=None, causal=False, feature_map="elu", rotary=False):
    """Query by query, explicit sums over the allowed keys. ``"elu"``:
    ``Σ_j w_ij v_j / Σ_j φ(q_i)·φ(k_j)`` with ``w_ij = φ(q_i)·φ(k_j)``, or with ``rotary``
    ``w_ij = (R_i φ(q_i))·(R_j φ(k_j))`` in the numerator only (RoFormer, linear attention);
    ``"softmax"``: softmax over each query's features times the keys' softmax over the allowed
    positions, feature by feature (Efficient Attention)."""
    q, k, v = (np.asarray(x, "float64") for x in (q, k, v))
    batch, q_len, heads, _ = q.shape
    allowed = allowed_keys(batch, q_len, k.shape[1], keep, causal)[:, 0]
    fq, fk = elu_plus_one(q), elu_plus_one(k)
    rq, rk = (numpy_rope(fq), numpy_rope(fk)) if rotary else (fq, fk)
    out = np.zeros((batch, q_len, heads, v.shape[-1]))
    for b, h, i in np.ndindex(batch, heads, q_len):
        keys = np.flatnonzero(allowed[b, i])
        if not len(keys):
            continue
        if feature_map == "elu":
            numerator = np.array([rq[b, i, h] @ rk[b, j, h] for j in keys])
            denominator = sum(fq[b, i, h] @ fk[b, j, h] for j in keys)
            out[b, i, h] = numerator @ v[b, keys, h] / denominator
        else:
            features = np.exp(q[b, i, h]) / np.exp(q[b, i, h]).sum()
            positions = np.exp(k[b, keys, h]) / np.exp(k[b, keys, h]).sum(axis=0)
            out[b, i, h] = features @ (positions.T @ v[b, keys, h])
    return out


def numpy_quantize(k, codebook):
    """Key by key, the codeword at the smallest squared distance: ``(k̂, codes)``."""
    k, codebook = np.asarray(k, "float64"), np.asarray(codebook, "float64")
    out = np.empty_like(k)
    codes = np.empty(k.shape[:3], int)
    for b, n, h in np.ndindex(k.shape[:3]):
        codes[b, n, h] = int(np.argmin([np.sum((k[b, n, h] - c) ** 2) for c in codebook[h]]))
        out[b, n, h] = codebook[h, codes[b, n, h]]
    return out, codes


def dense_projections(layer):
    """``{"q", "k", "v", "o"}`` → ``(kernel, bias or 0)`` in float64 of a layer with
    ``query_dense``, ``key_dense``, ``value_dense`` and ``output_dense``."""
    projections = {}
    for name in "qkvo":
        dense = getattr(layer, {"q": "query", "k": "key", "v": "value", "o": "output"}[name]
                        + "_dense")
        weights = [np.asarray(w, "float64") for w in dense.weights]
        projections[name] = (weights[0], weights[1] if len(weights) > 1 else 0.0)
    return projections


def project_heads(layer, x, heads, key_size, head_size):
    """NumPy ``q, k, v`` heads ``(batch, length, heads, size)`` of ``x`` through the layer's
    query/key/value Dense weights, and a function applying its output projection."""
    w = dense_projections(layer)
    x = np.asarray(x, "float64")
    batch, length = x.shape[:2]
    q, k, v = ((x @ w[n][0] + w[n][1]).reshape(batch, length, heads, size)
               for n, size in (("q", key_size), ("k", key_size), ("v", head_size)))

    def output(heads_out):
        return heads_out.reshape(batch, heads_out.shape[1], -1) @ w["o"][0] + w["o"][1]
    return q, k, v, output


# -- invariance checks ------------------------------------------------------------------------

def assert_causal_no_leak(run, inputs, times, seed=0, atol=1e-6, moved=1e-3):
    """``run(*inputs)`` is causal along axis 1: replacing every input after position ``t``
    must leave outputs ``<= t`` unchanged (``atol``) and change a later one (> ``moved``)."""
    base = np.asarray(run(*inputs))
    length = base.shape[1]
    for t in times:
        changed = [np.array(x, copy=True) for x in inputs]
        for x in changed:
            x[:, t + 1:] = np.random.RandomState(seed + t).randn(*x[:, t + 1:].shape)
        out = np.asarray(run(*changed))
        np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=atol)
        if t < length - 1:
            assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > moved


def assert_padding_invariant(run, inputs, extra, seed=0, atol=1e-6, rtol=1e-6):
    """``run(*inputs, keep)`` ignores masked positions: appending ``extra`` large random
    positions (masked out by ``keep``) must not change the real outputs (``atol`` plus
    ``rtol`` of each value: outputs of size ~30 differ by a float32 rounding of 4e-6)."""
    short = np.asarray(run(*inputs, None))
    rng = np.random.RandomState(seed)
    padded = [np.concatenate([x, 10 * rng.randn(x.shape[0], extra, *x.shape[2:])
                              .astype(x.dtype)], axis=1) for x in inputs]
    length = inputs[0].shape[1]
    keep = np.broadcast_to(np.arange(length + extra)[None] < length,
                           (inputs[0].shape[0], length + extra))
    out = np.asarray(run(*padded, keep))
    np.testing.assert_allclose(out[:, :length], short, atol=atol, rtol=rtol)


# -- layer round trips ------------------------------------------------------------------------

def copy_layer(layer, x, **config):
    """A new layer from ``layer``'s config (with ``config`` overrides), built for ``x``, with
    ``layer``'s weights."""
    clone = type(layer).from_config({**layer.get_config(), **config})
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    return clone


def assert_round_trips(layer, x, path, **call):
    """``from_config`` + weights, and a ``.keras`` file of a model around ``layer(…, **call)``
    loaded in safe mode, give exactly ``layer``'s outputs."""
    import keras
    clone = copy_layer(layer, x)
    np.testing.assert_array_equal(np.asarray(clone(x, **call)), np.asarray(layer(x, **call)))
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs, **call))
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def assert_mixed_bfloat16_close(layer, x, tolerance=5e-2, calls=({},)):
    """Under ``mixed_bfloat16`` with the same weights, each ``layer(x, **call)`` is finite and
    within ``tolerance`` times the float32 output scale ``max|y|``."""
    from keras import ops
    half = copy_layer(layer, x, dtype="mixed_bfloat16")
    for call in calls:
        out = np.asarray(ops.cast(half(x, **call), "float32"))
        reference = np.asarray(layer(x, **call))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, reference, atol=tolerance * np.abs(reference).max())


# -- builder checks ---------------------------------------------------------------------------

def config_for(model, config, attention=None):
    """``config`` (one multi-head encoder config shared by the tests) for builder ``model``:
    GAU-α's own unit has a single head, so it gets ``num_attention_heads=1`` unless an
    ``attention`` swap puts multi-head attention in its place."""
    if model == "gau_alpha" and attention in (None, "gau"):
        return {**config, "num_attention_heads": 1}
    return dict(config)


def builder_outputs(model, tokens, segments):
    return np.asarray(model([tokens, segments]))


def assert_builder_padding_invariant(model, tokens, segments, extra, atol=1e-5):
    """A BERT-family ``model([tokens, segments])`` ignores padding: appending ``extra``
    padding positions (id 0) leaves the outputs at the real positions unchanged (``atol``)."""
    short = builder_outputs(model, tokens, segments)
    widths = ((0, 0), (0, extra))
    long = builder_outputs(model, np.pad(tokens, widths), np.pad(segments, widths))
    np.testing.assert_allclose(long[:, :tokens.shape[1]], short, atol=atol, rtol=0)


def assert_builder_no_leak(model, tokens, segments, split, vocab, atol=1e-5, moved=1e-3):
    """A causal (lm/unilm) ``model``: changing the tokens from ``split`` on leaves the outputs
    before ``split`` unchanged (``atol``) and changes a later one (> ``moved``)."""
    changed = tokens.copy()
    changed[:, split:] = changed[:, split:] % (vocab - 1) + 1
    a = builder_outputs(model, tokens, segments)
    b = builder_outputs(model, changed, segments)
    np.testing.assert_allclose(a[:, :split], b[:, :split], atol=atol, rtol=0)
    assert np.abs(a[:, split:] - b[:, split:]).max() > moved


def assert_checkpoint_round_trip(builder, arrays, folder):
    """``builder`` maps exactly the names of the checkpoint ``arrays`` it was loaded from,
    and ``save_weights_as_checkpoint`` writes them back bit for bit."""
    assert set(builder.variable_mapping()) == set(arrays)
    builder.save_weights_as_checkpoint(os.path.join(str(folder), "again.ckpt"))
    saved = checkpoints.read_tf_checkpoint(str(folder))
    assert set(saved) == set(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(saved[name], value)


ENCODERS = ("bert", "roberta", "roformer", "roformer_v2", "gau_alpha")
SEQ2SEQ = ("t5", "t5.1.1", "mt5")


def tiny_configs(vocab_size, layers=2, intermediate_size=24, **encoder):
    """Configs ``(encoder, t5)`` of tiny random builders without dropout: width 16 in 2 heads
    of 8, ``layers`` layers, feed-forward width ``intermediate_size``, T5's relative positions
    in 8 buckets up to distance 20; ``encoder`` adds keys to the BERT-family config."""
    return (dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=layers,
                 num_attention_heads=2, intermediate_size=intermediate_size, dropout_rate=0.0,
                 **encoder),
            dict(vocab_size=vocab_size, d_model=16, d_kv=8, d_ff=intermediate_size,
                 num_layers=layers, num_heads=2, relative_attention_num_buckets=8,
                 relative_attention_max_distance=20, dropout_rate=0.0))


def segment_batch(seed, vocab, length=9):
    """Token ids ``(2, length)`` in ``[1, vocab)``, the second row padded (id 0) from 6 on,
    and segment ids (1 from position 4, 0 at padding)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (2, length)).astype("int32")
    tokens[1, 6:] = 0
    segments = np.zeros_like(tokens)
    segments[:, 4:] = 1
    segments[1, 6:] = 0
    return tokens, segments


def google_directory(folder, arrays, config):
    """Write ``arrays`` as a Google checkpoint ``model.ckpt`` and ``config`` as
    ``bert_config.json`` into ``folder``; returns ``(arrays, folder)``."""
    checkpoints.write_tf_checkpoint(arrays, os.path.join(str(folder), "model.ckpt"))
    with open(os.path.join(str(folder), "bert_config.json"), "w") as f:
        json.dump(config, f)
    return arrays, folder


def builders_per_application(folder, model, arrays, config):
    """Write ``arrays`` and ``config`` as a Google directory in ``folder`` and return
    ``(arrays, {application: builder})``, the builders of ``model`` loaded from it with MLM
    logits, for encoder, lm and unilm."""
    from keraformer.models import load_pretrained
    google_directory(folder, arrays, config)
    return arrays, {app: load_pretrained(str(folder), model=model, application=app,
                                         with_mlm="linear", return_keras_model=False)
                    for app in ("encoder", "lm", "unilm")}


def assert_builder_matches(model, expected, tokens, segments, atol, rtol=0.0):
    """``model([tokens, segments])`` equals the reference ``expected`` at the real positions
    (token id != 0) within ``atol``/``rtol``."""
    got, real = builder_outputs(model, tokens, segments), tokens != 0
    np.testing.assert_allclose(got[real], expected[real], atol=atol, rtol=rtol)


class NumpyReferenceChecks:
    """The checks shared by the builders tested against a NumPy forward pass of their own
    (RoFormerV2, GAU-α): a test module subclasses this as ``Test<Builder>`` and sets

    - ``MODEL`` and ``CONFIG`` (whose ``vocab_size`` the token ids are drawn from);
    - ``LENGTH``: tokens per row of the :func:`segment_batch` checked for every application;
    - ``ROUND_TRIP`` and ``LONG``: the applications of the checkpoint round trip and of the
      600-token input;
    - ``random_checkpoint()``: Google-format arrays with the builder's names;
    - ``reference(arrays, tokens, segments, application)``: ``(hidden states, MLM logits)``.

    Each application must match the reference within 1e-4 (abs and rel) at the real
    positions; the 600-token input within 1e-3 abs and 1e-4 rel.
    """

    @pytest.fixture(scope="class")
    def loaded(self, tmp_path_factory):
        """The random checkpoint's arrays and ``{application: builder}`` loaded from it."""
        return builders_per_application(tmp_path_factory.mktemp("m"), self.MODEL,
                                        self.random_checkpoint(), self.CONFIG)

    @pytest.mark.parametrize("application", ["encoder", "lm", "unilm"])
    def test_matches_numpy_reference(self, loaded, application):
        arrays, builders = loaded
        tokens, segments = segment_batch(1, self.CONFIG["vocab_size"], self.LENGTH)
        _, expected = self.reference(arrays, tokens, segments, application)
        assert_builder_matches(builders[application].model, expected, tokens, segments, 1e-4,
                               1e-4)

    def test_checkpoint_names_and_exact_round_trip(self, loaded, tmp_path):
        assert_checkpoint_round_trip(loaded[1][self.ROUND_TRIP], loaded[0], tmp_path)

    def test_long_input_matches_reference(self, loaded):
        """No position table: 600 tokens (beyond BERT's 512) still follow the formula."""
        arrays, builders = loaded
        rng = np.random.default_rng(5)
        tokens = rng.integers(1, self.CONFIG["vocab_size"], (1, 600)).astype("int32")
        segments = np.zeros_like(tokens)
        _, expected = self.reference(arrays, tokens, segments, self.LONG)
        assert_builder_matches(builders[self.LONG].model, expected, tokens, segments, 1e-3, 1e-4)


def numpy_rms_norm(x, eps=1e-12):
    """Parameter-free RMS norm ``x / sqrt(mean(x²) + eps)`` over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def application_allowed(tokens, segments, application):
    """``(batch, q, k)`` booleans of a builder ``application``: the key is not padding
    (id 0), plus causal (``lm``) or UniLM (``unilm``: segment-0 keys, or causal)."""
    n = tokens.shape[1]
    keys = (tokens != 0)[:, None, :]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    if application == "lm":
        return keys & (j <= i)[None]
    if application == "unilm":
        return keys & ((segments[:, None, :] == 0) | (j <= i)[None])
    return np.broadcast_to(keys, (len(tokens), n, n))


# -- execution modes (guarded values: an error where the backend can raise, else NaN) ---------

def compiled(fn):
    """``fn`` compiled the backend's way: XLA under TensorFlow, ``jax.jit`` under JAX."""
    import keras
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        return tf.function(fn, jit_compile=True)
    import jax
    return jax.jit(fn)


def graph_error():
    """The error a TensorFlow graph without XLA raises from a failed assertion."""
    import tensorflow as tf
    return tf.errors.InvalidArgumentError


# -- bad arguments ----------------------------------------------------------------------------

def refusal_cases(target, cases, valid=None):
    """``pytest.param(target, kwargs, error, name)`` for each ``(bad kwargs, error, name)`` of
    ``cases``, the bad keyword arguments over the ``valid`` ones, for
    :func:`assert_refused`. The id names ``target`` and the bad arguments, or is ``target``
    and a case's optional fourth item (a description, for arrays), and is the same in every
    process (no object addresses: pytest-xdist workers must collect identical ids)."""
    def shown(value):
        return "<callable>" if callable(value) else repr(value)[:40]

    def case_id(kwargs, description=None):
        return description or ",".join(f"{k}={shown(v)}" for k, v in kwargs.items())
    return [pytest.param(target, {**(valid or {}), **kwargs}, error, name,
                         id=f"{target.__name__}-{case_id(kwargs, *described)}")
            for kwargs, error, name, *described in cases]


def assert_refused(target, kwargs, error, name):
    """``target(**kwargs)`` raises ``error`` with a message naming ``name`` (back-quoted or
    not)."""
    with pytest.raises(error, match=f"`?{name}`?"):
        target(**kwargs)


# -- tokenizers -------------------------------------------------------------------------------

def train_sentencepiece(folder, texts, vocab_size, character_coverage=1.0, name="sp"):
    """Train a unigram SentencePiece model with T5's special ids (padding 0, end 1, unknown
    2, no start) on the lines ``texts``, written to ``folder/corpus.txt``; returns the path
    of the model, ``folder/<name>.model``."""
    import sentencepiece
    folder = str(folder)
    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(texts))
    sentencepiece.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(folder, name), vocab_size=vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram",
        character_coverage=character_coverage, minloglevel=2)
    return os.path.join(folder, name + ".model")


# -- bert4keras 0.11.5 -------------------------------------------------------------------------

def run_bert4keras(script, inputs, folder, timeout=600):
    """Run ``script`` with bert4keras 0.11.5 in a fresh Python and return what it wrote.

    bert4keras needs legacy tf-keras, which it swaps in process-wide (``TF_KERAS=1
    TF_USE_LEGACY_KERAS=1``), so it never runs inside the test process. The script finds
    ``inputs`` (JSON-able) with ``json.load(open(sys.argv[1]))`` and must write its results
    with ``json.dump(..., open(sys.argv[2], "w"))``; arrays may go to ``sys.argv[3]``
    (``np.savez``). Returns ``(json_results, {name: array})``.
    """
    folder = str(folder)
    paths = [os.path.join(folder, name) for name in ("in.json", "out.json", "out.npz")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(inputs, f, ensure_ascii=False)
    env = dict(os.environ, TF_KERAS="1", TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    env.pop("KERAS_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=folder)
    assert done.returncode == 0, f"bert4keras script failed:\n{done.stderr[-4000:]}"
    with open(paths[1], encoding="utf-8") as f:
        results = json.load(f)
    arrays = {}
    if os.path.exists(paths[2]):
        with np.load(paths[2]) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    return results, arrays


# -- optimizers -------------------------------------------------------------------------------

def numpy_adam(weights, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
    """``weights`` after Adam on the dense gradients ``grads`` (one array per step), float64.

    Kingma & Ba 2015, Algorithm 1, in the order of computation of their section 2 (which
    Keras follows): ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``,
    ``w ← w − α·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + ε)``; with ``weight_decay``, AdamW's decoupled decay
    ``w ← w − α·λ·w`` first (Loshchilov & Hutter 2019). A row that a batch uses ``k`` times has
    the sum of its ``k`` contributions as its gradient, squared once.
    """
    w = np.asarray(weights, "float64")
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, "float64")
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        alpha = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        w = w - lr * weight_decay * w - alpha * m / (np.sqrt(v) + epsilon)
    return w


def dense_gradients(model, inputs, targets, loss):
    """``[d loss(targets, model(inputs)) / d w for w in model.trainable_variables]`` as dense
    NumPy arrays (training mode), with the active backend's own differentiation; a TensorFlow
    ``tf.IndexedSlices`` is made dense with its repeated rows summed."""
    import keras
    if keras.backend.backend() == "jax":
        import jax
        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]

        def value(trainable):
            outputs, _ = model.stateless_call(trainable, fixed, inputs, training=True)
            return loss(targets, outputs)
        return [np.asarray(g) for g in jax.grad(value)(trainable)]
    import tensorflow as tf
    with tf.GradientTape() as tape:
        value = loss(targets, model(inputs, training=True))
    grads = tape.gradient(value, [v.value for v in model.trainable_variables])
    return [np.asarray(tf.convert_to_tensor(g)) for g in grads]
