"""The ``Example`` sections of the public docstrings run, as doctests, on the active backend.

Each public module's examples run in one test (``doctest``, with ``ELLIPSIS`` and
``NORMALIZE_WHITESPACE``), so CI runs them on TensorFlow and on JAX. A second test holds the
API to the documentation's promise: every public function and layer has an example, except
the names in ``WITHOUT_EXAMPLE``, which must shrink (a name listed there that has gained an
example fails the test until it is removed from the list).
"""

import doctest
import importlib
import inspect

import pytest

# modules whose docstrings the examples live in
MODULES = [
    "keraformer.attentions.dot_product", "keraformer.attentions.linear",
    "keraformer.attentions.gated", "keraformer.attentions.vq",
    "keraformer.positions.absolute", "keraformer.positions.relative",
    "keraformer.positions.rotary", "keraformer.positions.sinusoidal",
    "keraformer.positions.rerope", "keraformer.positions.randomized",
    "keraformer.losses.emo", "keraformer.losses.logit_adjustment",
    "keraformer.losses.multilabel", "keraformer.losses.sparse_softmax",
    "keraformer.losses.loss_layer",
    "keraformer.optimizers.accumulation", "keraformer.optimizers.recompute",
    "keraformer.optimizers.schedules",
    "keraformer.models.builders", "keraformer.models.heads", "keraformer.models.lora",
    "keraformer.models.layout", "keraformer.models.task", "keraformer.training",
    "keraformer.tokenizers.wordpiece", "keraformer.tokenizers.spm",
    "keraformer.data", "keraformer.generation", "keraformer.masks", "keraformer.normalization",
    "keraformer.feedforward", "keraformer.embedding", "keraformer.checkpoints",
    "keraformer.convert",
]
# the public names of each package (the API reference lists the same)
PUBLIC = {
    "keraformer.attentions": ["dot_product_attention", "attention_probabilities",
                              "entropy_scale", "linear_attention", "vq_attention", "quantize",
                              "MultiHeadAttention", "LinearAttention", "GatedAttentionUnit",
                              "ScaleOffset", "VQAttention"],
    "keraformer.positions": ["apply_rotary", "RotaryEmbedding", "PositionEmbedding",
                             "RelativePositionBias", "relative_position_bucket",
                             "SinusoidalPositionEmbedding", "rerope_scores", "random_positions",
                             "RandomPositions"],
    "keraformer.losses": ["emo_loss", "emo_token_losses", "emo_distance", "EMOLoss",
                          "adjust_logits", "logit_adjusted_loss", "LogitAdjustedLoss",
                          "multilabel_categorical_crossentropy", "global_pointer_crossentropy",
                          "sparse_softmax", "sparse_softmax_crossentropy",
                          "SparseSoftmaxCrossentropy", "SparseSoftmax", "LossLayer"],
    "keraformer.optimizers": ["AdamW", "SGD", "recompute_grad", "PiecewiseLinearSchedule",
                              "piecewise_linear"],
    "keraformer.models": ["build_transformer_model", "load_pretrained", "GlobalPointer",
                          "EfficientGlobalPointer", "ConditionalRandomField", "enable_lora",
                          "layout_map"],
    "keraformer.models.task": ["TransformerModel"],
    "keraformer.tokenizers": ["Tokenizer", "SpTokenizer", "load_vocab"],
    "keraformer.data": ["sequence_padding", "DataGenerator", "text_dataset", "seq2seq_dataset",
                        "read_labelled_texts", "mlm_dataset", "span_corruption_dataset",
                        "lm_dataset"],
    "keraformer.generation": ["generate", "viterbi_decode"],
    "keraformer.masks": ["mask_value", "padding_mask", "causal_mask", "unilm_mask",
                         "combine_masks", "apply_mask", "AttentionMask"],
    "keraformer.normalization": ["normalize", "LayerNormalization", "rms_norm",
                                 "deepnorm_constants", "deepnorm_initializer"],
    "keraformer.feedforward": ["FeedForward"],
    "keraformer.embedding": ["Embedding"],
    "keraformer.checkpoints": ["read_safetensors", "read_sharded_safetensors",
                               "read_tf_checkpoint", "read_h5_weights", "write_safetensors",
                               "write_hf_directory", "write_tf_checkpoint"],
    "keraformer.convert": ["convert", "describe", "main"],
    "keraformer.training": ["adversarial_training"],
}
# public names still without an example (see the module docstring)
WITHOUT_EXAMPLE = set()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name, tmp_path, monkeypatch):
    """Every ``>>>`` example in the module's docstrings gives the output it shows."""
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, name):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed"


def has_example(obj):
    return ">>>" in (inspect.getdoc(obj) or "")


def test_every_public_name_has_an_example_or_is_listed():
    """Each public function and layer has a ``>>>`` example, or is in ``WITHOUT_EXAMPLE``;
    listed names have none (the list only shrinks), and every listed name exists."""
    missing, listed_but_done = [], []
    for package, names in PUBLIC.items():
        module = importlib.import_module(package)
        for name in names:
            full = f"{package}.{name}"
            documented = has_example(getattr(module, name))
            if not documented and full not in WITHOUT_EXAMPLE:
                missing.append(full)
            if documented and full in WITHOUT_EXAMPLE:
                listed_but_done.append(full)
    unknown = sorted(n for n in WITHOUT_EXAMPLE
                     if n.rsplit(".", 1)[1] not in PUBLIC.get(n.rsplit(".", 1)[0], []))
    assert not missing, f"public names without an Example: {missing}"
    assert not listed_but_done, f"remove from WITHOUT_EXAMPLE (they have one): {listed_but_done}"
    assert not unknown, f"WITHOUT_EXAMPLE names that are not public: {unknown}"
    for name in MODULES:  # every example lives in a module that test_examples_run covers
        importlib.import_module(name)


def test_examples_are_found():
    """The finder sees the examples: a module known to have some yields tests (guards the
    runner above against silently running nothing)."""
    module = importlib.import_module("keraformer.convert")
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert len(tests) >= 2
