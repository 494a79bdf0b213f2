"""``keraformer convert`` / ``keraformer inspect``: round trips checked against the library
that wrote the source (``transformers`` on torch, bert4keras 0.11.5 in a subprocess), every
family through every target format it can hold, and each bad input refused by name."""

import importlib.metadata
import json
import os
import runpy
import sys

import numpy as np
import pytest
import torch
import transformers

from keraformer import convert as cli
from keraformer.models import build_transformer_model, load_pretrained
from tests.references import (ENCODERS, SEQ2SEQ, config_for, run_bert4keras, segment_batch,
                              tiny_configs)

VOCAB = 40
ENCODER_CONFIG, T5_CONFIG = tiny_configs(VOCAB, type_vocab_size=2, attention_key_size=8,
                                         max_position_embeddings=32)


def run(capsys, *argv):
    """``keraformer *argv`` in process: ``(exit status, stdout, stderr)``."""
    status = cli.main([str(a) for a in argv] + (["--quiet"] if argv[0] == "convert" else []))
    out, err = capsys.readouterr()
    return status, out, err


def torch_ids(array):
    return torch.tensor(np.asarray(array), dtype=torch.long)


# -- round trips against the writer's own library --------------------------------------------

BERT4KERAS_ROFORMER = """
import json, sys
import numpy as np
import tensorflow as tf
tf.compat.v1.disable_eager_execution()  # bert4keras' checkpoint writer is TF1 code:
tf.Session, tf.train.Saver = tf.compat.v1.Session, tf.compat.v1.train.Saver  # its names
from bert4keras.models import build_transformer_model
inputs = json.load(open(sys.argv[1]))
builder = build_transformer_model(inputs["config"], model="roformer", return_keras_model=False)
rng = np.random.default_rng(0)
builder.model.set_weights([rng.normal(0, 0.3, w.shape) for w in builder.model.get_weights()])
builder.save_weights_as_checkpoint(inputs["checkpoint"])
hidden = builder.model.predict([np.array(inputs["ids"]), np.array(inputs["segments"])], verbose=0)
json.dump({}, open(sys.argv[2], "w"))
np.savez(sys.argv[3], hidden=hidden)
"""


def test_bert4keras_roformer_to_hf_equals_bert4keras_in_transformers(tmp_path, capsys):
    """A Google RoFormer checkpoint written by bert4keras 0.11.5 (random weights), converted
    --to hf, loads in ``transformers``' ``RoFormerModel`` with no missing or unexpected
    weight and gives bert4keras' hidden states at the real positions (1e-5)."""
    source = tmp_path / "b4k"
    source.mkdir()
    config = {**ENCODER_CONFIG, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0}
    (source / "bert_config.json").write_text(json.dumps(config))
    tokens, segments = segment_batch(3, VOCAB)
    _, theirs = run_bert4keras(BERT4KERAS_ROFORMER, {
        "config": str(source / "bert_config.json"),
        "checkpoint": str(source / "bert_model.ckpt"),
        "ids": tokens.tolist(), "segments": segments.tolist()}, tmp_path)
    status, out, err = run(capsys, "convert", source, tmp_path / "hf", "--to", "hf")
    assert status == 0, err
    assert "family:     roformer" in out and "layers:     2" in out
    hf, info = transformers.RoFormerModel.from_pretrained(str(tmp_path / "hf"),
                                                          output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        ours = hf.eval()(input_ids=torch_ids(tokens), token_type_ids=torch_ids(segments),
                         attention_mask=torch_ids(tokens != 0)).last_hidden_state.numpy()
    real = tokens != 0
    assert np.abs(theirs["hidden"][real]).max() > 0.1
    np.testing.assert_allclose(ours[real], theirs["hidden"][real], atol=1e-5, rtol=1e-5)


def hf_bert(folder):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=24,
                                     max_position_embeddings=32)
    model = transformers.BertForPreTraining(config).eval()
    model.save_pretrained(str(folder))
    return model


def test_hf_bert_through_keraformer_and_google_back_to_hf_keeps_every_output(tmp_path, capsys):
    """HF BERT (pooler, MLM and NSP heads) → keraformer → Google → HF: keraformer's loads of
    the Google step give ``transformers``' hidden states, and ``BertForPreTraining`` on the
    final directory gives the original MLM and NSP logits (1e-5), every weight present."""
    original = hf_bert(tmp_path / "hf")
    for src, dst, to in (("hf", "own", "keraformer"), ("own", "google", "google"),
                         ("google", "back", "hf")):
        status, out, err = run(capsys, "convert", tmp_path / src, tmp_path / dst, "--to", to)
        assert status == 0, err
        assert f"format:     {'safetensors' if to == 'hf' else to}" in out
        assert "family:     bert" in out and "dtype:      float32" in out
    tokens, segments = segment_batch(5, VOCAB)
    inputs = dict(input_ids=torch_ids(tokens), token_type_ids=torch_ids(segments),
                  attention_mask=torch_ids(tokens != 0))
    with torch.no_grad():
        expected = original(**inputs, output_hidden_states=True)
        back, info = transformers.BertForPreTraining.from_pretrained(
            str(tmp_path / "back"), output_loading_info=True)
        assert not any(info.values()), info
        got = back.eval()(**inputs)
    real = tokens != 0
    np.testing.assert_allclose(got.prediction_logits.numpy()[real],
                               expected.prediction_logits.numpy()[real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.seq_relationship_logits.numpy(),
                               expected.seq_relationship_logits.numpy(), atol=1e-5, rtol=0)
    hidden = np.asarray(load_pretrained(str(tmp_path / "google"))([tokens, segments]))
    np.testing.assert_allclose(hidden[real], expected.hidden_states[-1].numpy()[real],
                               atol=1e-5, rtol=0)


def test_hf_t5_to_google_loads_equal_in_keraformer_and_back_in_transformers(tmp_path, capsys):
    """HF T5.1.1 → Google → keraformer load: next-token probabilities equal
    ``T5ForConditionalGeneration``'s softmax (1e-5); Google → HF again gives its logits."""
    torch.manual_seed(1)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=24, num_layers=2,
                                   num_heads=2, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20,
                                   feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    original = transformers.T5ForConditionalGeneration(config).eval()
    original.save_pretrained(str(tmp_path / "hf"))
    for src, dst, to in (("hf", "google", "google"), ("google", "back", "hf")):
        status, out, err = run(capsys, "convert", tmp_path / src, tmp_path / dst, "--to", to)
        assert status == 0, err
        assert "family:     t5.1.1" in out and "2 encoder + 2 decoder" in out
    rng = np.random.default_rng(2)
    enc = rng.integers(2, VOCAB, (2, 7))
    enc[1, 5:] = 0
    dec = rng.integers(2, VOCAB, (2, 4))
    dec[:, 0] = 0
    inputs = dict(input_ids=torch_ids(enc), attention_mask=torch_ids(enc != 0),
                  decoder_input_ids=torch_ids(dec))
    with torch.no_grad():
        logits = original(**inputs).logits.numpy()
        back = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "back"))
        again = back.eval()(**inputs).logits.numpy()
    np.testing.assert_allclose(again, logits, atol=1e-5, rtol=0)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    ours = np.asarray(load_pretrained(str(tmp_path / "google"))([enc, dec]))
    np.testing.assert_allclose(ours, probabilities, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["sharded", "h5"])
def test_sharded_and_tf_h5_hugging_face_sources_convert(fmt, tmp_path, capsys):
    """Sharded safetensors (``max_shard_size``) and ``tf_model.h5`` directories are read by
    ``inspect`` (their format named) and converted --to google; the result loads with
    ``transformers``' hidden states (1e-5)."""
    from tests.models.test_bert import write_tf_model_h5  # the Keras 2 layout of TFBert
    original = hf_bert(tmp_path / "hf")
    source = tmp_path / fmt
    if fmt == "sharded":
        original.save_pretrained(str(source), max_shard_size="20KB")
    else:
        source.mkdir()
        write_tf_model_h5(original.state_dict(), str(source / "tf_model.h5"))
        (source / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    status, out, _ = run(capsys, "inspect", source)
    assert status == 0 and f"format:     {fmt} " in out and "family:     bert" in out
    status, _, err = run(capsys, "convert", source, tmp_path / "google", "--to", "google")
    assert status == 0, err
    tokens, segments = segment_batch(6, VOCAB)
    with torch.no_grad():
        expected = original.bert(input_ids=torch_ids(tokens), token_type_ids=torch_ids(segments),
                                 attention_mask=torch_ids(tokens != 0)).last_hidden_state
    hidden = np.asarray(load_pretrained(str(tmp_path / "google"))([tokens, segments]))
    real = tokens != 0
    np.testing.assert_allclose(hidden[real], expected.numpy()[real], atol=1e-5, rtol=0)


# -- every family through every format it can hold -------------------------------------------

def random_builder(model):
    config = T5_CONFIG if model in SEQ2SEQ else config_for(model, ENCODER_CONFIG)
    builder = build_transformer_model(model=model, return_keras_model=False, **config)
    rng = np.random.default_rng(7)
    for variable in builder.model.weights:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    return builder


def outputs(model, family):
    tokens, segments = segment_batch(9, VOCAB)
    if family in SEQ2SEQ:
        return np.asarray(model([tokens, tokens[:, :4]]))
    return np.asarray(model([tokens, segments]))


@pytest.mark.parametrize("family", ENCODERS + SEQ2SEQ)
def test_every_family_survives_every_format_it_can_hold(family, tmp_path, capsys):
    """keraformer → Google → HF (where an HF architecture exists) → keraformer, through the
    command line: the last load gives the first model's outputs exactly (float32 copies);
    ``inspect`` names the family at each step."""
    builder = random_builder(family)
    expected = outputs(builder.model, family)
    builder.save(str(tmp_path / "k0"))
    chain = ["google"] + ([] if family in cli.CANNOT_HOLD["hf"] else ["hf"]) + ["keraformer"]
    previous, named = "k0", family
    for step, to in enumerate(chain):
        status, _, err = run(capsys, "convert", tmp_path / previous, tmp_path / f"s{step}",
                             "--to", to)
        assert status == 0, err
        previous = f"s{step}"
        if family == "roberta":
            named = "bert"  # its Google and Hugging Face exports are BERT's architecture
        status, out, _ = run(capsys, "inspect", tmp_path / previous)
        assert status == 0 and f"family:     {named}\n" in out
    assert len(chain) == (2 if family in ("roformer_v2", "gau_alpha") else 3)
    again = load_pretrained(str(tmp_path / previous))
    np.testing.assert_array_equal(outputs(again, family), expected)


def test_inspect_counts_what_the_writer_wrote_without_building(tmp_path, capsys, monkeypatch):
    """``inspect`` on a ``transformers`` BERT directory reports its format, family, layer
    count and parameter count (torch's own count) and never builds a model."""
    original = hf_bert(tmp_path / "hf")
    from keraformer.models import builders
    monkeypatch.setattr(builders, "make_builder", lambda *a, **k: pytest.fail("built"))
    status, out, _ = run(capsys, "inspect", tmp_path / "hf")
    assert status == 0
    count = sum(p.numel() for p in original.parameters())  # tied weights counted once
    assert f"parameters: {count:,} in" in out
    assert "format:     safetensors" in out and "layers:     2\n" in out
    status, out, _ = run(capsys, "inspect", tmp_path / "hf", "--json")
    info = json.loads(out)
    assert info["family"] == "bert" and info["dtypes"] == {"float32": info["tensors"]}


# -- refusals and atomicity ------------------------------------------------------------------

def test_bad_inputs_are_refused_by_name(tmp_path, capsys):
    """Missing SRC, unknown --to, a family the target cannot hold and a non-empty DST without
    --overwrite each exit with status 2 and a message naming the argument; nothing is
    written."""
    builder = random_builder("roformer_v2")
    builder.save(str(tmp_path / "v2"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases = [
        (("convert", tmp_path / "missing", tmp_path / "a", "--to", "hf"), "`SRC`"),
        (("convert", tmp_path / "v2", tmp_path / "a", "--to", "onnx"), "`--to`"),
        (("convert", tmp_path / "v2", tmp_path / "a", "--to", "hf"), "RoFormerV2"),
        (("convert", tmp_path / "v2", full, "--to", "google"), "--overwrite"),
        (("convert", tmp_path / "v2", tmp_path / "a", "--to", "google", "--model", "bert"),
         "`--model bert`"),
        (("inspect", tmp_path / "missing"), "`SRC`"),
    ]
    for argv, named in cases:
        status, _, err = run(capsys, *argv)
        assert status == 2 and named in err, (argv, err)
    assert not (tmp_path / "a").exists()
    assert sorted(os.listdir(full)) == ["keep.txt"]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]
    status, _, err = run(capsys, "convert", tmp_path / "v2", full, "--to", "google",
                         "--overwrite")
    assert status == 0, err
    assert "keep.txt" not in os.listdir(full) and "bert_config.json" in os.listdir(full)


def test_a_failed_write_leaves_the_destination_as_it_was(tmp_path, monkeypatch, capsys):
    """A writer that fails half-way leaves no DST (or the old DST under --overwrite) and no
    staging folder beside it."""
    random_builder("bert").save(str(tmp_path / "src"))
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")

    def half_write(builder, folder, to):
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write("{}")
        raise OSError("disk full")
    monkeypatch.setattr(cli, "write_target", half_write)
    for dst, extra in ((tmp_path / "new", ()), (old, ("--overwrite",))):
        status, _, err = run(capsys, "convert", tmp_path / "src", dst, "--to", "hf", *extra)
        assert status == 1 and "disk full" in err
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(old)) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["old", "src"]


def test_progress_is_reported_for_large_writes_only(tmp_path):
    """Progress lines go to the progress stream when the checkpoint reaches the threshold
    (set to 0 here) and not below it."""
    import io
    random_builder("bert").save(str(tmp_path / "src"))
    for threshold, shown in ((0, True), (10**12, False)):
        stream = io.StringIO()
        cli.convert(str(tmp_path / "src"), str(tmp_path / f"out{threshold}"), "google",
                    out=io.StringIO(), progress=stream, progress_bytes=threshold)
        assert ("writing: 100%" in stream.getvalue()) == shown, stream.getvalue()


@pytest.mark.filterwarnings("ignore:'keraformer.convert' found in sys.modules")
def test_console_script_and_module_entry_point(tmp_path, monkeypatch, capsys):
    """``keraformer`` is declared as a console script, and ``python -m keraformer.convert SRC
    DST --to ...`` (run here as ``__main__`` in process) converts and prints what it wrote."""
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert any(s.name == "keraformer" and s.value == "keraformer.convert:main"
               for s in scripts)
    random_builder("bert").save(str(tmp_path / "src"))
    monkeypatch.setattr(sys, "argv", ["keraformer.convert", str(tmp_path / "src"),
                                      str(tmp_path / "dst"), "--to", "google"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("keraformer.convert", run_name="__main__", alter_sys=True)
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err
    assert "family:     bert" in out and "reading" in err
    assert os.path.exists(tmp_path / "dst" / "bert_model.ckpt.index")
