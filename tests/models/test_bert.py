"""BERT/RoBERTa against Hugging Face `transformers` (PyTorch) with identical weights.

Tolerances (fp32, max abs over real positions): hidden states 1e-4, pooled 1e-4, MLM logits
1e-3. Each supported checkpoint format is written here from the PyTorch state dict.
"""

import json
import os
import re

import h5py
import keras
import numpy as np
import pytest
import torch
import transformers

from keraformer.checkpoints import write_tf_checkpoint
from keraformer.models import build_transformer_model, load_pretrained

CONFIG = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
              hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def batch(length=12, vocab=101, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab, (3, length)).astype("int32")
    ids[1, length - 4:] = 0
    ids[2, 3:] = 0
    segments = np.zeros_like(ids)
    segments[:, length // 2:] = 1
    segments[ids == 0] = 0
    return ids, segments


@pytest.fixture(scope="module")
def hf_bert():
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(**CONFIG)).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def hf_outputs(hf_bert):
    ids, segments = batch()
    with torch.no_grad():
        out = hf_bert.bert(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(segments),
                           attention_mask=torch.tensor(ids != 0))
        logits = hf_bert.cls.predictions(out.last_hidden_state)
    return ids, segments, out.last_hidden_state.numpy(), out.pooler_output.numpy(), logits.numpy()


def google_names(state):
    """Google BERT names for a PyTorch BertForPreTraining state dict (written independently)."""
    arrays = {}
    for key, value in state.items():
        value = value.numpy()
        if key.endswith("position_ids") or key.startswith("cls.predictions.decoder"):
            continue
        if key == "cls.predictions.bias":
            arrays["cls/predictions/output_bias"] = value
            continue
        if key.startswith("cls.seq_relationship"):
            leaf = "output_weights" if key.endswith("weight") else "output_bias"
            arrays["cls/seq_relationship/" + leaf] = value
            continue
        parts = key.replace("encoder.layer.", "encoder.layer_").split(".")
        leaf = parts.pop()
        if parts[-1] == "LayerNorm":
            leaf = {"weight": "gamma", "bias": "beta"}[leaf]
        elif parts[-1].endswith("_embeddings"):
            leaf = None
        elif leaf == "weight":
            leaf, value = "kernel", value.T
        arrays["/".join(parts + ([leaf] if leaf else []))] = value
    return arrays


def write_tf_model_h5(state, path):
    """A Hugging Face ``tf_model.h5`` (Keras 2 HDF5 layout of TFBertForPreTraining)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"bert", b"mlm___cls"]
        for key, value in state.items():
            value = value.numpy()
            if key.endswith("position_ids") or key.startswith("cls.predictions.decoder") \
                    or key.startswith("cls.seq"):
                continue
            if key == "cls.predictions.bias":
                f["mlm___cls/tf_bert_for_pre_training/mlm___cls/predictions/bias:0"] = value
                continue
            name = re.sub(r"encoder/layer/(\d+)/", r"encoder/layer_._\1/", key.replace(".", "/"))
            if "LayerNorm" in name:
                name = name.replace("/weight", "/gamma").replace("/bias", "/beta")
            elif name.endswith("word_embeddings/weight"):
                pass
            elif "_embeddings/" in name:
                name = name.replace("/weight", "/embeddings")
            elif name.endswith("/weight"):
                name, value = name[: -len("weight")] + "kernel", value.T
            if name.startswith("cls/"):
                name = "mlm___cls/tf_bert_for_pre_training/mlm___" + name
            else:
                name = "bert/tf_bert_for_pre_training/" + name
            f[name + ":0"] = value


@pytest.fixture(scope="module")
def checkpoint_dirs(hf_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    dirs = {}
    dirs["safetensors"] = str(root / "hf")
    hf_bert.save_pretrained(dirs["safetensors"])
    dirs["sharded"] = str(root / "sharded")
    hf_bert.save_pretrained(dirs["sharded"], max_shard_size="20KB")
    assert os.path.exists(os.path.join(dirs["sharded"], "model.safetensors.index.json"))
    dirs["h5"] = str(root / "h5")
    os.makedirs(dirs["h5"])
    write_tf_model_h5(hf_bert.state_dict(), os.path.join(dirs["h5"], "tf_model.h5"))
    dirs["google"] = str(root / "google")
    os.makedirs(dirs["google"])
    write_tf_checkpoint(google_names(hf_bert.state_dict()),
                        os.path.join(dirs["google"], "bert_model.ckpt"))
    for name in ("h5", "google"):
        config_name = "bert_config.json" if name == "google" else "config.json"
        with open(os.path.join(dirs[name], config_name), "w") as f:
            json.dump({**CONFIG, **({"model_type": "bert"} if name == "h5" else {})}, f)
    return dirs


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "h5", "google"])
def test_every_format_matches_transformers(fmt, checkpoint_dirs, hf_outputs):
    ids, segments, hidden, pooled, logits = hf_outputs
    real = ids != 0
    model = load_pretrained(checkpoint_dirs[fmt])
    out = np.asarray(model([ids, segments]))
    assert np.abs(out - hidden)[real].max() < 1e-4
    pooled_model = load_pretrained(checkpoint_dirs[fmt], with_pool=True, with_mlm="linear")
    pool, mlm = (np.asarray(t) for t in pooled_model([ids, segments]))
    assert np.abs(pool - pooled).max() < 1e-4
    assert np.abs(mlm - logits)[real].max() < 1e-3


def test_save_weights_as_checkpoint_round_trip(checkpoint_dirs, hf_outputs, tmp_path):
    ids, segments, hidden, _, _ = hf_outputs
    builder = load_pretrained(checkpoint_dirs["safetensors"], with_pool=True, with_mlm=True,
                              return_keras_model=False)
    before = [np.asarray(t) for t in builder.model([ids, segments])]
    builder.save_weights_as_checkpoint(str(tmp_path / "bert_model.ckpt"))
    config = os.path.join(checkpoint_dirs["safetensors"], "config.json")
    again = build_transformer_model(config, str(tmp_path / "bert_model.ckpt"), with_pool=True,
                                    with_mlm=True)
    after = [np.asarray(t) for t in again([ids, segments])]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_own_save_reloads(checkpoint_dirs, hf_outputs, tmp_path):
    ids, segments, hidden, _, _ = hf_outputs
    builder = load_pretrained(checkpoint_dirs["google"], return_keras_model=False,
                              application="unilm")
    builder.save(str(tmp_path / "own"))
    again = load_pretrained(str(tmp_path / "own"))
    np.testing.assert_array_equal(np.asarray(builder.model([ids, segments])),
                                  np.asarray(again([ids, segments])))


def test_roberta_hf_directory(tmp_path):
    config = transformers.RobertaConfig(**{**CONFIG, "max_position_embeddings": 66,
                                           "type_vocab_size": 1, "pad_token_id": 1})
    torch.manual_seed(1)
    hf = transformers.RobertaModel(config, add_pooling_layer=False).eval()
    hf.save_pretrained(str(tmp_path))
    ids, _ = batch(seed=3)
    ids = np.where(ids == 0, 1, ids + 1).astype("int32")
    ids[ids >= CONFIG["vocab_size"]] = 5
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != 1))
    model = load_pretrained(str(tmp_path))
    out = np.asarray(model([ids, np.zeros_like(ids)]))
    real = ids != 1
    assert np.abs(out - ref.last_hidden_state.numpy())[real].max() < 1e-4


def test_roberta_hf_mlm_head_matches_transformers(tmp_path):
    """A Hugging Face RobertaForMaskedLM directory: ``lm_head.*`` feeds ``with_mlm``; logits
    equal transformers' (1e-3) at real positions, padding id 1."""
    config = transformers.RobertaConfig(**{**CONFIG, "max_position_embeddings": 66,
                                           "type_vocab_size": 1, "pad_token_id": 1,
                                           "layer_norm_eps": 1e-5})
    torch.manual_seed(2)
    hf = transformers.RobertaForMaskedLM(config).eval()
    with torch.no_grad():  # head biases and norms away from their initial values
        for name, p in hf.named_parameters():
            if name.startswith("lm_head") and ("bias" in name or "layer_norm" in name):
                p.add_(torch.randn_like(p) * 0.3)
    hf.save_pretrained(str(tmp_path))
    ids, _ = batch(seed=4)
    ids = np.where(ids == 0, 1, ids + 1).astype("int32")
    ids[ids >= CONFIG["vocab_size"]] = 5
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != 1)).logits
    model = load_pretrained(str(tmp_path), with_mlm="linear")
    out = np.asarray(model([ids, np.zeros_like(ids)]))
    real = ids != 1
    assert np.abs(out - ref.numpy())[real].max() < 1e-3


@pytest.fixture(scope="module")
def random_bert():
    return build_transformer_model(model="bert", **CONFIG, return_keras_model=False,
                                   with_mlm="linear")


def test_padding_never_changes_real_positions(random_bert):
    ids, segments = batch()
    short = np.asarray(random_bert.model([ids[2:, :3], segments[2:, :3]]))
    padded = np.asarray(random_bert.model([ids[2:], segments[2:]]))
    assert np.abs(short - padded[:, :3]).max() < 1e-5


@pytest.mark.parametrize("application", ["lm", "unilm"])
def test_causal_applications_do_not_leak(application):
    model = build_transformer_model(model="bert", application=application, with_mlm="linear",
                                    **CONFIG)
    ids, segments = batch()
    ids, segments = ids[:1].copy(), np.zeros_like(ids[:1])
    split = 5
    segments[:, split:] = 1
    changed = ids.copy()
    changed[:, 8:] = (changed[:, 8:] + 7) % 100 + 1
    a, b = np.asarray(model([ids, segments])), np.asarray(model([changed, segments]))
    assert np.abs(a[:, :8] - b[:, :8]).max() < 1e-5
    assert np.abs(a[:, 8:] - b[:, 8:]).max() > 5e-5  # the change is visible later on
    if application == "unilm":  # the source part sees the whole source, nothing of the target
        source = ids.copy()
        source[:, 1] = source[:, 1] % 100 + 1
        c = np.asarray(model([source, segments]))
        assert np.abs(c[:, 0] - a[:, 0]).max() > 5e-5


def test_unilm_mask_matches_definition():
    from keraformer.masks import unilm_mask
    segments = np.array([[0, 0, 0, 1, 1, 1, 1]])
    got = np.asarray(unilm_mask(segments))[0, 0]
    expected = np.zeros((7, 7), bool)
    for i in range(7):
        for j in range(7):
            expected[i, j] = j < 3 or (segments[0, i] == 1 and j <= i)
    np.testing.assert_array_equal(got, expected)


def test_hierarchical_position_extends_short_table():
    config = {**CONFIG, "max_position_embeddings": 64}
    plain = build_transformer_model(model="bert", **config, return_keras_model=False)
    long = build_transformer_model(model="bert", **config, hierarchical_position=True,
                                   return_keras_model=False)
    long.model.set_weights(plain.model.get_weights())
    ids, segments = batch(length=64)
    np.testing.assert_allclose(np.asarray(long.model([ids, segments])),
                               np.asarray(plain.model([ids, segments])), atol=1e-6)
    ids, segments = batch(length=300)
    out = np.asarray(long.model([ids, segments]))
    assert out.shape == (3, 300, 32) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="300.*64|64.*300"):
        plain.model([ids, segments])


def test_errors_name_the_problem(checkpoint_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_transformer_model(checkpoint_path=str(tmp_path / "nowhere"), **CONFIG)
    with pytest.raises(ValueError, match="model.*gpt9"):
        build_transformer_model(model="gpt9", **CONFIG)
    with pytest.raises(ValueError, match=r"intermediate/dense/kernel.*\(32, 37\).*\(32, 40\)"):
        load_pretrained(checkpoint_dirs["google"], intermediate_size=40)
    with pytest.raises(ValueError, match="missing.*pooler"):
        partial = google_names_without_pooler(checkpoint_dirs, tmp_path)
        build_transformer_model(checkpoint_path=partial, with_pool=True, **CONFIG)
    model = build_transformer_model(**CONFIG)
    ids, segments = batch()
    ids[0, 0] = CONFIG["vocab_size"]
    with pytest.raises(ValueError, match=r"token_ids.*\[0, 101\).*101"):
        model([ids, segments])


def google_names_without_pooler(checkpoint_dirs, tmp_path):
    from keraformer.checkpoints import read_tf_checkpoint
    arrays = read_tf_checkpoint(checkpoint_dirs["google"])
    arrays = {k: v for k, v in arrays.items() if "pooler" not in k}
    return write_tf_checkpoint(arrays, str(tmp_path / "partial" / "bert_model.ckpt"))


def test_fit_reduces_loss_with_dropout(random_bert):
    import keras
    model = build_transformer_model(model="bert", **{**CONFIG, "hidden_dropout_prob": 0.1},
                                    with_pool=True)
    out = keras.layers.Dense(2, activation="softmax")(model.output)
    classifier = keras.Model(model.inputs, out)
    classifier.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    ids, segments = batch(length=12)
    ids = np.repeat(ids, 4, axis=0)
    segments = np.repeat(segments, 4, axis=0)
    labels = (ids[:, 1] % 2).astype("int32")
    history = classifier.fit([ids, segments], labels, epochs=8, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize("application", ["encoder", "lm", "unilm"])
def test_keras_file_round_trip_and_jit(application, tmp_path):
    import keras
    model = build_transformer_model(model="bert", application=application, **CONFIG,
                                    with_pool=application == "encoder",
                                    hierarchical_position=True)
    ids, segments = batch()
    before = np.asarray(model([ids, segments]))
    model.save(str(tmp_path / "bert.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "bert.keras"))  # safe mode
    np.testing.assert_array_equal(before, np.asarray(loaded([ids, segments])))
    loaded.compile(jit_compile=True)
    np.testing.assert_allclose(loaded.predict([ids, segments], verbose=0), before, atol=1e-5)


def test_mixed_bfloat16_is_close_to_float32():
    import keras
    ids, segments = batch()
    reference = build_transformer_model(model="bert", **CONFIG)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_transformer_model(model="bert", **CONFIG)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(reference.get_weights())
    want = np.asarray(reference([ids, segments]))
    got = np.asarray(keras.ops.cast(mixed([ids, segments]), "float32"))
    assert np.isfinite(got).all()
    assert np.abs(got - want)[ids != 0].max() < 0.1  # bfloat16 keeps ~3 significant digits


def test_save_pretrained_loads_in_transformers(checkpoint_dirs, hf_outputs, tmp_path):
    ids, segments, hidden, pooled, logits = hf_outputs
    builder = load_pretrained(checkpoint_dirs["google"], with_pool=True, with_mlm="linear",
                              return_keras_model=False)
    builder.save_pretrained(str(tmp_path / "export"))
    exported = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "export")).eval()
    with torch.no_grad():
        out = exported(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(segments),
                       attention_mask=torch.tensor(ids != 0), output_hidden_states=True)
    real = ids != 0
    assert np.abs(out.hidden_states[-1].numpy() - hidden)[real].max() < 1e-4
    assert np.abs(out.prediction_logits.numpy() - logits)[real].max() < 1e-3


@pytest.mark.parametrize("fmt", ["safetensors", "google"])
def test_heads_not_built_survive_load_then_save(fmt, checkpoint_dirs, hf_bert, tmp_path):
    """An encoder loaded without pooler, MLM and NSP heads writes the checkpoint's heads back
    (``save_pretrained`` and ``save_weights_as_checkpoint``): transformers reads every
    weight of the original exactly, instead of initialising the missing heads at random."""
    builder = load_pretrained(checkpoint_dirs[fmt], return_keras_model=False)
    assert builder.model.output.shape[-1] == CONFIG["hidden_size"]  # no head was built
    builder.save_pretrained(str(tmp_path / "hf"))
    exported = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf"))
    original = hf_bert.state_dict()
    for name, value in exported.state_dict().items():
        if not name.endswith("position_ids"):
            np.testing.assert_array_equal(value.numpy(), original[name].numpy(), err_msg=name)
    builder.save_weights_as_checkpoint(str(tmp_path / "google" / "model.ckpt"))
    again = build_transformer_model(checkpoint_path=str(tmp_path / "google" / "model.ckpt"),
                                    with_pool=True, with_mlm="linear", with_nsp=True,
                                    return_keras_model=False, **CONFIG)
    reference = load_pretrained(checkpoint_dirs[fmt], with_pool=True, with_mlm="linear",
                                with_nsp=True, return_keras_model=False)
    for name, value in reference.checkpoint_arrays().items():
        np.testing.assert_array_equal(again.checkpoint_arrays()[name], value, err_msg=name)
    # weights loaded later from keraformer's own format (which holds no unused heads) replace
    # the carried heads of the earlier load instead of mixing with them
    builder.save(str(tmp_path / "own"))
    builder.load_weights_from_checkpoint(str(tmp_path / "own"))
    assert set(builder.checkpoint_arrays()) == set(builder.variable_mapping())


@pytest.mark.parametrize("model, hf_class", [("bert", "BertForMaskedLM"),
                                             ("roformer", "RoFormerForMaskedLM")])
def test_save_pretrained_without_segment_embedding(model, hf_class, tmp_path):
    """``segment_vocab_size=0``: transformers always has a token-type table, so the export
    writes one zero row (``type_vocab_size=1``), which adds nothing: transformers' logits
    equal ours (1e-3) and transformers reports no missing weight (a random table would be)."""
    builder = build_transformer_model(model=model, segment_vocab_size=0, with_mlm="linear",
                                      return_keras_model=False, **CONFIG)
    rng = np.random.default_rng(12)
    for variable in builder.model.weights:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    builder.save_pretrained(str(tmp_path))
    hf, info = getattr(transformers, hf_class).from_pretrained(str(tmp_path),
                                                               output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert hf.config.type_vocab_size == 1
    ids, _ = batch()
    with torch.no_grad():
        theirs = hf.eval()(input_ids=torch.tensor(ids, dtype=torch.long),
                           attention_mask=torch.tensor(ids != 0, dtype=torch.long)).logits
    real = ids != 0
    ours = np.asarray(builder.model(ids))
    assert np.abs(ours - theirs.numpy())[real].max() < 1e-3


@pytest.mark.parametrize("application, entropy", [("encoder", False), ("lm", True)])
def test_traced_graph_with_unknown_length(application, entropy):
    """Compiled predict/evaluate trace with length None on TensorFlow (masks and attention
    must cope); JAX traces concrete shapes, so there the model is jitted."""
    model = build_transformer_model(model="bert", application=application, **CONFIG,
                                    entropy_scaling=entropy)
    if keras.backend.backend() == "jax":
        import jax
        traced = jax.jit(lambda a, b: model([a, b]))
    else:
        import tensorflow as tf
        spec = tf.TensorSpec((None, None), tf.int32)
        traced = tf.function(lambda a, b: model([a, b]), input_signature=[spec, spec])
    ids, segments = batch()
    np.testing.assert_allclose(np.asarray(traced(ids, segments)),
                               np.asarray(model([ids, segments])), atol=1e-5)


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, "model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle.*safetensors"):
        load_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="pickle"):
        build_transformer_model(checkpoint_path=str(tmp_path / "pytorch_model.bin"), **CONFIG)


def test_truncated_safetensors_is_a_clear_error(checkpoint_dirs, tmp_path):
    import shutil
    target = tmp_path / "cut"
    shutil.copytree(checkpoint_dirs["safetensors"], target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        load_pretrained(str(target))


def test_option_of_another_builder_is_an_error_not_a_config_key():
    with pytest.raises(ValueError, match=r"BERT does not take the option\(s\) \['attention'\]"):
        build_transformer_model(model="bert", attention="linear", **CONFIG)
