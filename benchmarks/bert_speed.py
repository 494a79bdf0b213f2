"""BERT-base speed: keraformer against KerasHub's ``BertBackbone``, same weights, one process.

Both models have BERT-base sizes (12 layers, hidden 768, 12 heads, intermediate 3072, vocab
21128, dropout 0.1) and carry the same random weights: keraformer builds them, exports them as
a Hugging Face directory and KerasHub loads that with ``BertBackbone.from_preset``; the
script prints how far apart their hidden states are before timing (not exactly equal:
KerasHub's ``BertBackbone`` hard-codes the tanh approximation of GELU, keraformer uses BERT's
exact erf GELU; on a 2-layer hidden-64 model the gap is 3e-6, and 8e-7 with ``gelu_new``). Each gets the same head
(a 2-way softmax ``Dense`` on the pooled ``[CLS]`` vector), Adam and sparse cross-entropy.
Timed per batch (default 8 × 128 random non-padding ids): the forward pass
(``predict_on_batch``) and one training step (``train_on_batch``), with and without
``jit_compile`` (XLA); the first calls (tracing, compilation) are warm-up, the figure is the
median of ``--repeats`` calls. The ratio column is keraformer's speed over KerasHub's
(KerasHub seconds / keraformer seconds; above 1 keraformer is faster).

    python benchmarks/bert_speed.py                  # BERT-base, about 6 minutes on 2 CPU cores
    python benchmarks/bert_speed.py --layers 2 --repeats 2       # quick look
"""

import argparse
import os
import statistics
import tempfile
import time

import keras
import numpy as np


def parse_args():
    parser = argparse.ArgumentParser(description="keraformer vs KerasHub BERT speed")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--vocab", type=int, default=21128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="eager,jit",
                        help="comma list of eager (jit_compile=False) and jit (XLA)")
    return parser.parse_args()


def bert_config(args):
    return dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                num_attention_heads=args.heads, intermediate_size=args.intermediate,
                max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
                hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def keraformer_encoder(config, folder):
    """keraformer's BERT with pooler, and its weights written as a Hugging Face directory."""
    from keraformer.models import build_transformer_model
    keras.utils.set_random_seed(0)
    builder = build_transformer_model(model="bert", with_pool=True, return_keras_model=False,
                                      **config)
    return builder.model, builder.save_pretrained(os.path.join(folder, "hf"))


def kerashub_encoder(hf_directory):
    import keras_hub
    return keras_hub.models.BertBackbone.from_preset(hf_directory, dropout=0.1)


def classifier(encoder, pooled, jit_compile):
    """``encoder`` + 2-way softmax on ``pooled``, compiled with Adam and sparse CE."""
    probabilities = keras.layers.Dense(2, activation="softmax", name="head",
                                       kernel_initializer="zeros")(pooled)
    model = keras.Model(encoder.inputs, probabilities)
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy",
                  jit_compile=jit_compile)
    return model


def inputs_for(name, token_ids):
    segment_ids = np.zeros_like(token_ids)
    if name == "keraformer":
        return [token_ids, segment_ids]
    return {"token_ids": token_ids, "segment_ids": segment_ids,
            "padding_mask": np.ones_like(token_ids, dtype=bool)}


def median_seconds(step, warmup, repeats):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_same_weights(ours, theirs, token_ids, layers):
    """Largest |difference| between the two last hidden states on ``token_ids``."""
    ours_hidden = keras.Model(ours.inputs, ours.get_layer(f"Transformer-{layers - 1}").output)
    a = ours_hidden.predict_on_batch(inputs_for("keraformer", token_ids))
    b = theirs.predict_on_batch(inputs_for("kerashub", token_ids))["sequence_output"]
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def main():
    args = parse_args()
    config = bert_config(args)
    token_ids = np.random.RandomState(0).randint(1, args.vocab, (args.batch, args.length))
    token_ids = token_ids.astype("int32")
    labels = np.random.RandomState(1).randint(0, 2, (args.batch,)).astype("int32")
    start = time.perf_counter()
    ours, hf_directory = keraformer_encoder(config, tempfile.mkdtemp())
    theirs = kerashub_encoder(hf_directory)
    difference = check_same_weights(ours, theirs, token_ids, args.layers)
    print(f"BERT {args.layers} layers, hidden {args.hidden}, heads {args.heads}, intermediate "
          f"{args.intermediate}, vocab {args.vocab}; batch {args.batch} x {args.length}; "
          f"keras {keras.__version__} ({keras.backend.backend()}), "
          f"{os.cpu_count()} CPU cores")
    print(f"same weights: max |keraformer - KerasHub| last hidden state = {difference:.2e} "
          f"(KerasHub uses tanh GELU, keraformer exact GELU; built in "
          f"{time.perf_counter() - start:.0f} s)", flush=True)
    pooled = {"keraformer": ours.output, "kerashub": theirs.output["pooled_output"]}
    encoders = {"keraformer": ours, "kerashub": theirs}
    rows = []
    for mode in args.modes.split(","):
        jit = mode == "jit"
        seconds = {}
        for name in ("keraformer", "kerashub"):
            model = classifier(encoders[name], pooled[name], jit)
            x = inputs_for(name, token_ids)
            seconds[name, "forward"] = median_seconds(lambda: model.predict_on_batch(x),
                                                      args.warmup, args.repeats)
            seconds[name, "train"] = median_seconds(lambda: model.train_on_batch(x, labels),
                                                    args.warmup, args.repeats)
            print(f"  {mode:5s} {name:10s} forward {seconds[name, 'forward'] * 1e3:8.1f} ms"
                  f"  train {seconds[name, 'train'] * 1e3:8.1f} ms", flush=True)
        for step in ("forward", "train"):
            rows.append((mode, step, seconds["keraformer", step], seconds["kerashub", step]))
    print()
    print(f"{'jit_compile':12s} {'step':8s} {'keraformer ms':>14s} {'KerasHub ms':>12s} "
          f"{'speed ratio':>12s}")
    for mode, step, ours_s, theirs_s in rows:
        print(f"{str(mode == 'jit'):12s} {step:8s} {ours_s * 1e3:14.1f} {theirs_s * 1e3:12.1f} "
              f"{theirs_s / ours_s:12.2f}")
    print("speed ratio = keraformer speed / KerasHub speed (KerasHub time / keraformer time)")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
