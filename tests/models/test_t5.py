"""T5, T5.1.1 and mT5 against Hugging Face transformers (PyTorch) on identical random weights.

Checked: encoder states (1e-4) and decoder next-token log-probabilities (1e-3) with padded
sources; greedy and 4-beam generation token-identical to ``generate`` (beam settings:
``length_penalty=1.0, early_stopping=True``); cached and uncached decoding identical; Google
checkpoint names, exact round trip and the wrong-version error; a short ``model.fit``.
"""

import json

import numpy as np
import pytest
import torch
import transformers

import keras
from keraformer import generation
from keraformer.models import build_transformer_model, load_pretrained
from keraformer.models.decoding import seq2seq_decoder

CONFIG = dict(vocab_size=48, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=2,
              num_heads=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              dropout_rate=0.0, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
VERSIONS = {"t5": "relu", "t5.1.1": "gated-gelu", "mt5": "gated-gelu"}


def hf_model(version, seed=0):
    """A random Hugging Face model of ``version`` (weights ~ N(0, 0.5²), eos made likelier)."""
    cls = (transformers.MT5ForConditionalGeneration if version == "mt5"
           else transformers.T5ForConditionalGeneration)
    config_cls = transformers.MT5Config if version == "mt5" else transformers.T5Config
    config = config_cls(feed_forward_proj=VERSIONS[version],
                        tie_word_embeddings=version == "t5", **CONFIG)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
        model.lm_head.weight[1] *= 2.0  # end token: sequences of different lengths
    return model


@pytest.fixture(scope="module", params=list(VERSIONS))
def pair(request, tmp_path_factory):
    version = request.param
    hf = hf_model(version)
    path = tmp_path_factory.mktemp(version.replace(".", "_"))
    hf.save_pretrained(str(path))
    builder = load_pretrained(str(path), return_keras_model=False)
    return version, hf, builder


def sources(count=20, length=9, seed=1):
    """Random source ids 2..vocab-1 with random right padding (at least two real tokens)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, CONFIG["vocab_size"], (count, length))
    for row, real in zip(ids, rng.integers(2, length + 1, count)):
        row[real:] = 0
    return ids.astype("int32")


def hf_generate(hf, ids, **kwargs):
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                          attention_mask=torch.tensor(ids != 0, dtype=torch.long), **kwargs)
    return out.numpy()[:, 1:]  # drop the start token


def until_end(row, end_id=1):
    """The tokens up to and including the first end id (HF fills beams' tails with eos)."""
    row = list(row)
    return row[:row.index(end_id) + 1] if end_id in row else row


def test_builder_class_follows_version(pair):
    version, _, builder = pair
    assert builder.version == version
    assert builder.glu == (version != "t5") and builder.tied == (version == "t5")


def test_encoder_and_decoder_match_transformers(pair):
    _, hf, builder = pair
    enc = sources(6, 9)
    dec = np.random.default_rng(2).integers(2, CONFIG["vocab_size"], (6, 5)).astype("int32")
    dec[:, 0] = 0
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(enc, dtype=torch.long),
                 attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long))
    hidden = np.asarray(builder.encoder(enc))
    real = enc != 0
    np.testing.assert_allclose(hidden[real], out.encoder_last_hidden_state.numpy()[real],
                               atol=1e-4, rtol=0)
    reference = torch.log_softmax(out.logits, -1).numpy()
    np.testing.assert_allclose(np.log(np.asarray(builder.decoder([hidden, dec, enc]))),
                               reference, atol=1e-3, rtol=0)
    np.testing.assert_allclose(np.log(np.asarray(builder.model([enc, dec]))), reference,
                               atol=1e-3, rtol=0)


def test_zero_encoder_state_is_still_attended_to(pair):
    """The source mask comes from the source ids: a real position whose encoder state is
    exactly zero (its values carry no information about padding) is attended to as in
    transformers, and changing a padded position's state changes nothing."""
    _, hf, builder = pair
    enc = sources(4, 7, seed=5)
    dec = np.random.default_rng(6).integers(2, CONFIG["vocab_size"], (4, 4)).astype("int32")
    dec[:, 0] = 0
    hidden = np.array(builder.encoder(enc))
    hidden[:, 1] = 0.0  # a real position (every row has at least two real tokens)
    with torch.no_grad():
        out = hf(encoder_outputs=(torch.tensor(hidden),),
                 attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long))
    reference = torch.log_softmax(out.logits, -1).numpy()
    got = np.log(np.asarray(builder.decoder([hidden, dec, enc])))
    np.testing.assert_allclose(got, reference, atol=1e-3, rtol=0)
    # the zero state matters: attending to it differs from masking it
    masked = enc.copy()
    masked[:, 1] = 0
    assert np.abs(np.log(np.asarray(builder.decoder([hidden, dec, masked]))) - got).max() > 1e-3
    noisy = hidden.copy()
    noisy[enc == 0] = 7.0  # padded states never reach the decoder
    np.testing.assert_allclose(np.log(np.asarray(builder.decoder([noisy, dec, enc]))), got,
                               atol=1e-6, rtol=0)


def test_two_input_decoder_keeps_the_contract(pair, tmp_path):
    """``builder.decoder([encoder_output, decoder_token_ids])`` (DESIGN's contract): with no
    mask anywhere every source state is attended to, as transformers without
    ``encoder_attention_mask``; inside a Keras graph the encoder output's Keras mask hides the
    padding, so the composed graph equals ``builder.model``. The decoder reloads from
    ``.keras`` with identical outputs, and any other input count is refused."""
    _, hf, builder = pair
    enc = sources(4, 7, seed=8)
    dec = np.random.default_rng(9).integers(2, CONFIG["vocab_size"], (4, 5)).astype("int32")
    dec[:, 0] = 0
    hidden = np.asarray(builder.encoder(enc))
    with torch.no_grad():
        out = hf(encoder_outputs=(torch.tensor(hidden),),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long))
    unmasked = np.log(np.asarray(builder.decoder([hidden, dec])))
    np.testing.assert_allclose(unmasked, torch.log_softmax(out.logits, -1).numpy(),
                               atol=1e-3, rtol=0)
    assert np.abs(unmasked - np.log(np.asarray(builder.decoder([hidden, dec, enc])))).max() > 1e-3
    src = keras.Input((None,), dtype="int32")
    tgt = keras.Input((None,), dtype="int32")
    composed = keras.Model([src, tgt], builder.decoder([builder.encoder(src), tgt]))
    np.testing.assert_allclose(np.asarray(composed([enc, dec])),
                               np.asarray(builder.model([enc, dec])), atol=1e-6, rtol=0)
    path = str(tmp_path / "decoder.keras")
    builder.decoder.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(reloaded([hidden, dec, enc])),
                               np.asarray(builder.decoder([hidden, dec, enc])), atol=1e-6, rtol=0)
    for bad in ([hidden], [hidden, dec, enc, enc]):
        with pytest.raises(ValueError, match=r"builder.decoder takes \[encoder_output"):
            builder.decoder(bad)


def test_greedy_generation_matches_transformers(pair):
    _, hf, builder = pair
    ids = sources()
    reference = hf_generate(hf, ids, do_sample=False, num_beams=1, max_length=13, min_length=3)
    ours = builder.generate(ids, max_length=12, min_length=2)
    assert (reference == 1).any(axis=1).sum() >= 3  # several sequences end early
    np.testing.assert_array_equal(ours, reference)


def test_beam_search_matches_transformers(pair):
    _, hf, builder = pair
    ids = sources(seed=3)
    reference = hf_generate(hf, ids, do_sample=False, num_beams=4, max_length=11,
                            length_penalty=1.0, early_stopping=True)
    ours = builder.generate(ids, max_length=10, method="beam", beam_size=4,
                            length_penalty=1.0, early_stopping=True)
    assert [until_end(r) for r in ours] == [until_end(r) for r in reference]


def test_cache_and_no_cache_give_identical_tokens(pair):
    _, _, builder = pair
    ids = sources(8, seed=4)
    for method, kwargs in (("greedy", {}), ("beam", {"beam_size": 3})):
        cached = builder.generate(ids, max_length=8, method=method, **kwargs)
        full = builder.generate(ids, max_length=8, method=method, use_cache=False, **kwargs)
        np.testing.assert_array_equal(cached, full)


def test_beam_search_keeps_cross_attention_once_per_source(pair):
    """During beam search every step sees the cross-attention keys/values with one row per
    source (never repeated per beam) and the self-attention cache with one row per source,
    holding the start token and one column per beam and step; the spied decoding gives the
    same tokens as ``generate``."""
    _, _, builder = pair
    ids, beams = sources(5, seed=6), 4
    decoder = seq2seq_decoder(builder)
    seen = []

    def spy(token_ids, index, cache, parents):
        (context_key, context_value), (key, _) = cache["context"][0], cache["layers"][0]
        seen.append((token_ids.shape[0], context_key.shape[0], context_value.shape[0],
                     tuple(key.shape[:2])))
        return decoder.step(token_ids, index, cache, parents)

    log_probs, cache = decoder.prefill(ids, 6, beams)
    for loop in (dict(compile=False), dict(loop="device")):  # eager steps, and the trace
        spied = generation.generate(spy, cache, log_probs, 1, max_length=6, method="beam",
                                    beam_size=beams, vocab_size=CONFIG["vocab_size"],
                                    variables=builder.model.weights, **loop)
        np.testing.assert_array_equal(spied, builder.generate(ids, max_length=6,
                                                              method="beam", beam_size=beams))
    assert seen and all(row == (5 * beams, 5, 5, (5, 1 + 6 * beams)) for row in seen)


def google_names(version):
    norm = "rms_norm" if version == "mt5" else "layer_norm"
    final = "rms_norm" if version == "mt5" else "final_layer_norm"
    names = {"shared/embedding", f"encoder/{final}/scale", f"decoder/{final}/scale",
             "encoder/block_000/layer_000/SelfAttention/relative_attention_bias",
             "decoder/block_000/layer_000/SelfAttention/relative_attention_bias"}
    ffn = ["wi_0", "wi_1", "wo"] if version != "t5" else ["wi", "wo"]
    for i in range(2):
        e, d = f"encoder/block_{i:03d}/", f"decoder/block_{i:03d}/"
        names |= {e + f"layer_000/SelfAttention/{w}" for w in "qkvo"}
        names |= {d + f"layer_000/SelfAttention/{w}" for w in "qkvo"}
        names |= {d + f"layer_001/EncDecAttention/{w}" for w in "qkvo"}
        names |= {e + f"layer_00{j}/{norm}/scale" for j in (0, 1)}
        names |= {d + f"layer_00{j}/{norm}/scale" for j in (0, 1, 2)}
        names |= {e + f"layer_001/DenseReluDense/{w}/kernel" for w in ffn}
        names |= {d + f"layer_002/DenseReluDense/{w}/kernel" for w in ffn}
    if version != "t5":
        names.add("decoder/logits/kernel")
    return names


def test_google_checkpoint_round_trip(pair, tmp_path):
    import tensorflow as tf

    version, hf, builder = pair
    prefix = str(tmp_path / "model.ckpt")
    builder.save_weights_as_checkpoint(prefix)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    assert set(shapes) == google_names(version)
    # Google layouts: (heads, buckets) biases, (in, out) kernels
    bias = reader.get_tensor("encoder/block_000/layer_000/SelfAttention/relative_attention_bias")
    np.testing.assert_array_equal(
        bias, hf.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        .detach().numpy().T)
    np.testing.assert_array_equal(
        reader.get_tensor("encoder/block_000/layer_000/SelfAttention/q"),
        hf.encoder.block[0].layer[0].SelfAttention.q.weight.detach().numpy().T)
    loaded = build_transformer_model(checkpoint_path=prefix, model=version,
                                     return_keras_model=False, **CONFIG)
    for name in shapes:
        np.testing.assert_array_equal(reader.get_tensor(name), loaded.checkpoint_arrays()[name])
    enc = sources(4)
    np.testing.assert_array_equal(np.asarray(loaded.encoder(enc)),
                                  np.asarray(builder.encoder(enc)))
    other = "t5" if version != "t5" else "t5.1.1"
    with pytest.raises(ValueError, match="looks like T5"):
        build_transformer_model(checkpoint_path=prefix, model=other, **CONFIG)


def test_fit_keras_save_and_own_format_round_trip(tmp_path):
    builder = build_transformer_model(model="t5.1.1", return_keras_model=False, **CONFIG)
    enc = sources(16, seed=5)
    targets = np.where(enc > 0, enc, 0)
    dec = np.concatenate([np.zeros((16, 1), "int32"), targets[:, :-1]], axis=1)
    builder.model.compile(optimizer=keras.optimizers.Adam(1e-2),
                          loss=keras.losses.SparseCategoricalCrossentropy())
    history = builder.model.fit([enc, dec], targets, sample_weight=(targets > 0) * 1.0,
                                epochs=4, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    expected = np.asarray(builder.model([enc, dec]))
    path = str(tmp_path / "t5.keras")
    builder.model.save(path)
    restored = keras.saving.load_model(path)  # safe mode: no Lambda layers
    np.testing.assert_allclose(np.asarray(restored([enc, dec])), expected, atol=1e-6, rtol=0)
    builder.save(str(tmp_path / "own"))
    reloaded = load_pretrained(str(tmp_path / "own"), return_keras_model=False)
    np.testing.assert_allclose(np.asarray(reloaded.model([enc, dec])), expected, atol=1e-6,
                               rtol=0)


def test_bad_config_raises_named_errors():
    with pytest.raises(ValueError, match="d_kv"):
        build_transformer_model(model="t5", **{k: v for k, v in CONFIG.items() if k != "d_kv"})
    with pytest.raises(ValueError, match="feed_forward_proj"):
        build_transformer_model(model="t5", **{**CONFIG, "feed_forward_proj": "gelu-gated"})
    with pytest.raises(ValueError, match="num_heads"):
        build_transformer_model(model="mt5", **{**CONFIG, "num_heads": 0})


@pytest.mark.parametrize("version", list(VERSIONS))
def test_save_pretrained_loads_in_transformers_and_back(version, tmp_path):
    keras.utils.set_random_seed(11)
    builder = build_transformer_model(model=version, return_keras_model=False, **CONFIG)
    rng = np.random.default_rng(11)
    for variable in builder.model.weights:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
    path = str(tmp_path)
    builder.save_pretrained(path)
    prefix = "MT5" if version == "mt5" else "T5"
    hf, info = getattr(transformers, f"{prefix}ForConditionalGeneration").from_pretrained(
        path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert hf.config.feed_forward_proj == VERSIONS[version]
    assert hf.config.relative_attention_max_distance == 20
    enc = sources(6, 9, seed=12)
    dec = np.random.default_rng(13).integers(2, CONFIG["vocab_size"], (6, 5)).astype("int32")
    dec[:, 0] = 0
    with torch.no_grad():
        out = hf.eval()(input_ids=torch.tensor(enc, dtype=torch.long),
                        attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                        decoder_input_ids=torch.tensor(dec, dtype=torch.long))
        encoder_only = getattr(transformers, f"{prefix}EncoderModel").from_pretrained(path)
        encoder_hidden = encoder_only.eval()(
            input_ids=torch.tensor(enc, dtype=torch.long),
            attention_mask=torch.tensor(enc != 0, dtype=torch.long)).last_hidden_state.numpy()
    real = enc != 0
    hidden = np.asarray(builder.encoder(enc))
    np.testing.assert_allclose(hidden[real], out.encoder_last_hidden_state.numpy()[real],
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(hidden[real], encoder_hidden[real], atol=1e-4, rtol=0)
    probs = np.asarray(builder.model([enc, dec]))
    np.testing.assert_allclose(np.log(probs), torch.log_softmax(out.logits, -1).numpy(),
                               atol=1e-4, rtol=0)
    loaded = load_pretrained(path, return_keras_model=False)
    assert (loaded.version, loaded.tied) == (builder.version, builder.tied)
    reloaded = loaded.checkpoint_arrays()
    for name, value in builder.checkpoint_arrays().items():
        np.testing.assert_array_equal(reloaded[name], value)
    np.testing.assert_array_equal(np.asarray(loaded.model([enc, dec])), probs)


def test_write_safetensors_round_trips(tmp_path):
    """keraformer's safetensors writer (used by every save_pretrained) against its own reader
    and the ``safetensors`` package; the T5 export above depends on it."""
    import ml_dtypes
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from keraformer.checkpoints import read_safetensors, write_safetensors

    rng = np.random.default_rng(14)
    arrays = {"kernel": rng.normal(size=(3, 5)).astype("float32"),
              "transposed": rng.normal(size=(4, 2)).T,  # not C-contiguous, float64
              "big_endian": np.arange(6, dtype=">i8").reshape(2, 3),
              "half": rng.normal(size=7).astype("float16"), "mask": np.array([True, False]),
              "empty": np.zeros((0, 4), "int32"), "bf16": np.arange(3, dtype=ml_dtypes.bfloat16)}
    path = write_safetensors(str(tmp_path / "x.safetensors"), arrays, {"format": "pt"})
    ours, theirs = read_safetensors(path), load_file(path)
    assert set(ours) == set(theirs) == set(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(theirs[name], value)
        assert theirs[name].dtype == value.dtype.newbyteorder("=")
        np.testing.assert_array_equal(ours[name], value)  # bfloat16 read back as float32
    with safe_open(path, "np") as f:
        assert f.metadata() == {"format": "pt"}
    with open(path, "rb") as f:
        assert int.from_bytes(f.read(8), "little") % 8 == 0
    with pytest.raises(ValueError, match="'bad'.*complex64"):
        write_safetensors(str(tmp_path / "y.safetensors"), {"bad": np.zeros(2, "complex64")})


def test_mt5_from_bert4keras_config_with_keep_tokens_equals_the_full_model(tmp_path):
    """bert4keras' mT5 config keys (hidden_size, num_hidden_layers, num_attention_heads,
    attention_head_size, intermediate_size, hidden_act ["gelu", "linear"]) and model name
    ``mt5.1.1``; ``keep_tokens`` keeps shared-embedding rows and output-projection columns, so
    the kept model's logits equal the full model's at the kept ids (1e-5)."""
    hf = hf_model("mt5")
    hf.save_pretrained(str(tmp_path / "hf"))
    config = {"vocab_size": CONFIG["vocab_size"], "hidden_size": CONFIG["d_model"],
              "num_hidden_layers": CONFIG["num_layers"], "num_attention_heads": CONFIG["num_heads"],
              "attention_head_size": CONFIG["d_kv"], "intermediate_size": CONFIG["d_ff"],
              "hidden_act": ["gelu", "linear"], "hidden_dropout_prob": 0.0,
              "relative_attention_num_buckets": CONFIG["relative_attention_num_buckets"],
              "relative_attention_max_distance": 20}
    (tmp_path / "b4k.json").write_text(json.dumps(config))
    keep = np.array([0, 1] + list(range(40, 20, -2)))  # pad/start 0 and end 1 keep their ids
    kept = build_transformer_model(str(tmp_path / "b4k.json"), str(tmp_path / "hf"),
                                   model="mt5.1.1", keep_tokens=keep, with_lm="linear")
    full = load_pretrained(str(tmp_path / "hf"), with_lm="linear")
    rng = np.random.default_rng(7)
    enc = rng.integers(2, len(keep), (3, 6)).astype("int32")
    enc[1, 4:] = 0
    dec = rng.integers(2, len(keep), (3, 4)).astype("int32")
    dec[:, 0] = 0
    got = np.asarray(kept([enc, dec]))
    want = np.asarray(full([keep[enc], keep[dec]]))[..., keep]
    assert got.shape == (3, 4, len(keep))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    hf_logits = hf(input_ids=torch.tensor(keep[enc], dtype=torch.long),
                   attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                   decoder_input_ids=torch.tensor(keep[dec], dtype=torch.long)).logits
    np.testing.assert_allclose(got, hf_logits.detach().numpy()[..., keep], atol=1e-3, rtol=0)


def test_bert4keras_scaling_scales_untied_logits():
    """bert4keras multiplies the T5.1.1/mT5 decoder output by d_model^-0.5 before the untied
    projection; ``bert4keras_scaling=True`` does too (default: Hugging Face's numerics)."""
    plain = build_transformer_model(model="mt5", **CONFIG, with_lm="linear",
                                    return_keras_model=False)
    scaled = build_transformer_model(model="mt5", **CONFIG, with_lm="linear",
                                     bert4keras_scaling=True, return_keras_model=False)
    scaled.model.set_weights(plain.model.get_weights())
    enc, dec = sources(2, 5), np.array([[0, 5, 6], [0, 7, 8]], "int32")
    np.testing.assert_allclose(np.asarray(scaled.model([enc, dec])),
                               np.asarray(plain.model([enc, dec])) * CONFIG["d_model"] ** -0.5,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="bert4keras_scaling"):
        scaled.save_pretrained("unused")


BERT4KERAS_MT5 = """
import json, sys
import numpy as np
from bert4keras.backend import set_gelu
from bert4keras.models import build_transformer_model
set_gelu("tanh")  # Google's and Hugging Face's gated-gelu is the tanh form
inputs = json.load(open(sys.argv[1]))
model = build_transformer_model(inputs["config"], inputs["checkpoint"], model="mt5.1.1",
                                keep_tokens=inputs["keep"])
probs = model.predict([np.array(inputs["enc"]), np.array(inputs["dec"])], verbose=0)
json.dump({}, open(sys.argv[2], "w"))
np.savez(sys.argv[3], probs=probs)
"""


def test_mt5_equals_bert4keras_with_its_numerics_and_keep_tokens(tmp_path):
    """bert4keras 0.11.5 itself (subprocess) on a Google mT5 checkpoint, a bert4keras-style
    config and ``keep_tokens``: keraformer with bert4keras' numerics
    (``bert4keras_scaling=True``: d_model^-0.5 before the untied projection;
    ``cross_position_bias=True``: the decoder's position bias in the cross-attention) gives
    the same probabilities (1e-5); with the defaults (Hugging Face's numerics) they differ."""
    from tests.references import run_bert4keras
    config = {"vocab_size": 48, "hidden_size": 16, "num_hidden_layers": 2,
              "num_attention_heads": 2, "attention_head_size": 8, "intermediate_size": 24,
              "hidden_act": ["gelu", "linear"], "hidden_dropout_prob": 0.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    source = build_transformer_model(str(tmp_path / "config.json"), model="mt5",
                                     return_keras_model=False)
    rng = np.random.default_rng(3)
    source.model.set_weights([rng.normal(0, 0.5, w.shape) for w in source.model.get_weights()])
    checkpoint = source.save_weights_as_checkpoint(str(tmp_path / "model.ckpt"))
    keep = [0, 1] + list(range(47, 27, -1))
    enc = rng.integers(2, len(keep), (3, 7)).astype("int32")
    enc[1, 5:] = 0
    dec = rng.integers(2, len(keep), (3, 5)).astype("int32")
    dec[:, 0] = 0
    _, arrays = run_bert4keras(BERT4KERAS_MT5, {
        "config": str(tmp_path / "config.json"), "checkpoint": checkpoint, "keep": keep,
        "enc": enc.tolist(), "dec": dec.tolist()}, tmp_path)
    options = dict(model="mt5.1.1", keep_tokens=keep)
    ours = build_transformer_model(str(tmp_path / "config.json"), checkpoint,
                                   bert4keras_scaling=True, cross_position_bias=True, **options)
    np.testing.assert_allclose(np.asarray(ours([enc, dec])), arrays["probs"], atol=1e-5,
                               rtol=0)
    plain = build_transformer_model(str(tmp_path / "config.json"), checkpoint, **options)
    assert np.abs(np.asarray(plain([enc, dec])) - arrays["probs"]).max() > 1e-3


def test_cross_position_bias_cached_decoding_equals_full_decoding():
    """With bert4keras' cross-attention position bias the cached step (bias at the step's
    offset) gives the tokens of recomputing the decoder over the whole prefix."""
    builder = build_transformer_model(model="t5.1.1", **CONFIG, cross_position_bias=True,
                                      return_keras_model=False)
    rng = np.random.default_rng(8)
    builder.model.set_weights([rng.normal(0, 0.5, w.shape) for w in builder.model.get_weights()])
    ids = sources(6, seed=9)
    cached = builder.generate(ids, max_length=8)
    full = builder.generate(ids, max_length=8, use_cache=False)
    np.testing.assert_array_equal(cached, full)
    assert len(np.unique(cached)) > 2  # not a degenerate all-end output
