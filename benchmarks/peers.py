"""keraformer against KerasHub and bert4keras on identical BERT weights, in one process.

Forward pass and training step (classifier on the pooled [CLS] vector, sparse CE, Adam) at
each batch × length, in float32 and mixed bfloat16. Weights: a random BERT-base-sized model
built by keraformer, written as a Google TF checkpoint (read by bert4keras) and a Hugging Face
directory (read by KerasHub's ``BertBackbone.from_preset``). bert4keras runs on ``tf_keras``
(``pip install tf-keras && pip install --no-deps bert4keras==0.11.5``: with its declared
dependencies pip falls back to 0.8.1, which does not import; skipped with a note where it
does not import). Each
library runs in its own child process of this script (bert4keras swaps ``keras`` for
``tf.keras`` process-wide), on the same weight files and inputs.
Prints seconds per step (median of ``--repeats`` after warm-up), achieved GFLOP/s, the
machine's measured float32 matmul GFLOP/s, and throughput ratios.

    python benchmarks/peers.py                       # BERT-base, 8×128 and 2×512
    python benchmarks/peers.py --layers 2 --repeats 2   # quick look
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np




def matmul_gflops(n=2048, repeats=5):
    """Measured float32 matmul rate of this machine through Keras (GFLOP/s)."""
    import keras
    a = keras.random.normal((n, n))
    keras.ops.matmul(a, a)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, a))
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def bert_flops(config, batch, length, training):
    """Matmul FLOPs of one BERT step: projections, attention and feed-forward."""
    d, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    tokens = batch * length
    per_layer = 2 * tokens * (4 * d * d + 2 * d * ff) + 4 * batch * length * length * d
    forward = layers * per_layer + 2 * batch * d * d
    return forward * (3 if training else 1)


def time_call(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def keraformer_model(config, checkpoint):
    import keras
    from keraformer.models import build_transformer_model
    encoder = build_transformer_model(checkpoint_path=checkpoint, with_pool=True,
                                      dropout_rate=0.0, **config)
    out = keras.layers.Dense(2, activation="softmax", dtype="float32")(encoder.output)
    model = keras.Model(encoder.inputs, out)
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy")
    return model, lambda ids: [ids, np.zeros_like(ids)]


def kerashub_model(config, hf_directory):
    import keras
    import keras_hub
    backbone = keras_hub.models.BertBackbone.from_preset(hf_directory, dropout=0.0)
    out = keras.layers.Dense(2, activation="softmax", dtype="float32")(
        backbone.output["pooled_output"])
    model = keras.Model(backbone.input, out)
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy")
    return model, lambda ids: {"token_ids": ids, "segment_ids": np.zeros_like(ids),
                               "padding_mask": ids != 0}


def bert4keras_model(config_path, checkpoint):
    import tf_keras
    from bert4keras.models import build_transformer_model
    encoder = build_transformer_model(config_path, checkpoint, with_pool=True,
                                      dropout_rate=0.0)
    out = tf_keras.layers.Dense(2, activation="softmax", dtype="float32")(encoder.output)
    model = tf_keras.Model(encoder.inputs, out)
    model.compile(tf_keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy")
    return model, lambda ids: [ids, np.zeros_like(ids)]


def set_precision(name, precision):
    """The global mixed-precision policy of the Keras that library ``name`` runs on."""
    policy = "mixed_bfloat16" if precision == "bf16" else "float32"
    if name == "bert4keras":
        import tf_keras as keras
    else:
        import keras
    keras.mixed_precision.set_global_policy(policy)


def write_checkpoints(config, folder):
    """One set of random weights as a Google checkpoint and a Hugging Face directory."""
    from keraformer.models import build_transformer_model
    builder = build_transformer_model(with_pool=True, return_keras_model=False, **config)
    checkpoint = builder.save_weights_as_checkpoint(os.path.join(folder, "bert_model.ckpt"))
    config_path = os.path.join(folder, "bert_config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    hf_directory = builder.save_pretrained(os.path.join(folder, "hf"))
    return config_path, checkpoint, hf_directory


PEERS = ("keraformer", "kerashub", "bert4keras")


def run_peer(name, config, files, shapes, precisions, repeats):
    """Seconds per step for one library: ``{(precision, shape, mode): seconds}``."""
    config_path, checkpoint, hf_directory = files
    makers = {"keraformer": lambda: keraformer_model(config, checkpoint),
              "kerashub": lambda: kerashub_model(config, hf_directory),
              "bert4keras": lambda: bert4keras_model(config_path, checkpoint)}
    results = {}
    for precision in precisions:
        set_precision(name, precision)
        try:
            model, inputs = makers[name]()
        except Exception as error:  # a peer that cannot run here is reported, not fatal
            print(f"{name} ({precision}) unavailable: {type(error).__name__}: "
                  f"{str(error)[:200]}", file=sys.stderr)
            continue
        for shape in shapes:
            batch, length = map(int, shape.split("x"))
            ids = np.random.RandomState(0).randint(1, config["vocab_size"], (batch, length))
            x, labels = inputs(ids.astype("int32")), np.zeros((batch,), "int32")
            results[f"{precision} {shape} forward"] = time_call(
                lambda: model.predict_on_batch(x), repeats)
            results[f"{precision} {shape} train"] = time_call(
                lambda: model.train_on_batch(x, labels), repeats)
    return results


def main():
    parser = argparse.ArgumentParser(description="keraformer vs KerasHub vs bert4keras")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=21128)
    parser.add_argument("--shapes", default="8x128,2x512")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = dict(vocab_size=args.vocab, hidden_size=args.hidden,
                  num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                  intermediate_size=4 * args.hidden, max_position_embeddings=512,
                  type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    shapes, precisions = args.shapes.split(","), args.precisions.split(",")
    if args.peer:  # child process: time one library, print JSON
        results = run_peer(args.peer, config, json.loads(args.files), shapes, precisions,
                           args.repeats)
        print("RESULTS " + json.dumps(results))
        return
    files = write_checkpoints(config, tempfile.mkdtemp())
    peak = matmul_gflops()
    print(f"BERT {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}; "
          f"measured float32 matmul: {peak:.1f} GFLOP/s", flush=True)
    timings = {}
    for name in PEERS:
        env = dict(os.environ)
        if name == "bert4keras":
            env.update(TF_USE_LEGACY_KERAS="1", TF_KERAS="1")
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--peer", name,
                                "--files", json.dumps(files)], capture_output=True,
                               text=True, env=env)
        lines = [l for l in child.stdout.splitlines() if l.startswith("RESULTS ")]
        if child.returncode or not lines:
            print(f"{name}: failed: {child.stderr.strip().splitlines()[-1:]}")
            continue
        timings[name] = json.loads(lines[-1][len("RESULTS "):])
        for line in child.stderr.splitlines():
            if "unavailable" in line:
                print(line)
    for precision in precisions:
        for shape in shapes:
            batch, length = map(int, shape.split("x"))
            for mode in ("forward", "train"):
                key = f"{precision} {shape} {mode}"
                flops = bert_flops(config, batch, length, mode == "train")
                got = {name: t[key] for name, t in timings.items() if key in t}
                line = f"{key:22s}"
                for name, seconds in got.items():
                    line += (f" | {name} {seconds * 1000:8.1f} ms "
                             f"{flops / seconds / 1e9:6.1f} GFLOP/s")
                for peer in ("kerashub", "bert4keras"):
                    if peer in got and "keraformer" in got:
                        line += f" | ×{got[peer] / got['keraformer']:.2f} vs {peer}"
                if mode == "forward" and "keraformer" in got:
                    line += f" | {flops / got['keraformer'] / 1e9 / peak:.2f} of matmul rate"
                print(line, flush=True)
    print("(×r: keraformer throughput / peer throughput; higher is better)")


if __name__ == "__main__":
    main()
