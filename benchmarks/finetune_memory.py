"""Fine-tuning memory: a BERT-large-sized classifier step in keraformer's memory-saving modes
against KerasHub's ``BertBackbone`` in plain float32.

Model: 24 layers × 1024 hidden, 16 heads, 4096 intermediate, vocabulary 30522, sequence
length 512 (no padding), the pooled ``[CLS]`` vector into a 2-way softmax head, AdamW
(learning rate 1e-5), dropout 0.1, TensorFlow (Keras' default ``compile``: graph mode, no XLA
on a CPU). Configurations, each in its own process (peak resident memory is per process):

* ``keras_hub``: ``keras_hub.models.BertBackbone``, float32 — the reference;
* ``fp32``: ``build_transformer_model("bert", ...)``, float32;
* ``bf16``: the ``mixed_bfloat16`` policy (float32 weights, bfloat16 compute);
* ``recompute``: ``recompute=True`` (each block recomputed in the backward pass);
* ``lora``: ``enable_lora(backbone, rank=8)`` on query/value, the rest of the backbone frozen;
* ``accumulation``: ``AdamW(accumulation_steps=4)``, four micro-batches of a quarter batch;
* ``all``: all four together;
* ``all_bf16_weights``: the same with the frozen backbone built under the ``"bfloat16"``
  policy: its weights, never updated, are stored in bfloat16 (the products are the same
  bfloat16 ones as under ``mixed_bfloat16``); the adapters, the head and their optimizer
  state stay float32.

Each child builds its model, takes one step to trace it, then times ``--steps`` steps (a step
is one batch: one ``train_on_batch``, or four of a quarter batch when accumulating) and reports
its peak resident set (``ru_maxrss``, everything the process ever held: TensorFlow itself,
weights, optimizer state, activations) and the seconds per example. A watchdog thread ends a
child whose resident set passes ``--memory-gib`` (or what the machine has free), so that a
configuration that does not fit is reported instead of taking the machine down.

``--batch auto`` first measures KerasHub at batches 1 and 2 and takes the largest multiple of
4 whose projected peak (linear in the batch) stays under ``--machine-gib``; every
configuration then runs at that batch. Run::

    python benchmarks/finetune_memory.py --batch auto            # the full size (slow)
    python benchmarks/finetune_memory.py --layers 2 --batch 4    # a quick check
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

CONFIGS = ("keras_hub", "fp32", "bf16", "recompute", "lora", "accumulation", "all",
           "all_bf16_weights")
MODES = {"fp32": set(), "bf16": {"bf16"}, "recompute": {"recompute"}, "lora": {"lora"},
         "accumulation": {"accumulation"},
         "all": {"bf16", "recompute", "lora", "accumulation"},
         "all_bf16_weights": {"bf16", "recompute", "lora", "accumulation", "bf16_weights"}}
GIB = 1024 ** 3


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def current_rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def watchdog(limit):
    """End this process (exit code 3) as soon as its resident set passes ``limit`` bytes."""
    def watch():
        while True:
            if current_rss_bytes() > limit:
                print(json.dumps({"exceeded_gib": limit / GIB}), flush=True)
                os._exit(3)
            time.sleep(0.05)
    threading.Thread(target=watch, daemon=True).start()


def keras_hub_model(args):
    import keras
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=args.vocab, num_layers=args.layers, num_heads=args.heads,
        hidden_dim=args.hidden, intermediate_dim=args.intermediate, dropout=0.1,
        max_sequence_length=args.length)
    inputs = {"token_ids": keras.Input((None,), dtype="int32"),
              "segment_ids": keras.Input((None,), dtype="int32"),
              "padding_mask": keras.Input((None,), dtype="int32")}
    pooled = backbone(inputs)["pooled_output"]
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    model.compile(keras.optimizers.AdamW(1e-5), "sparse_categorical_crossentropy")
    return model, lambda ids: {"token_ids": ids, "segment_ids": 0 * ids,
                               "padding_mask": ids != 0}


def keraformer_model(args, modes):
    import keras
    from keraformer.models import build_transformer_model, enable_lora
    from keraformer.optimizers import AdamW

    if "bf16" in modes:
        keras.mixed_precision.set_global_policy(
            "bfloat16" if "bf16_weights" in modes else "mixed_bfloat16")
    encoder = build_transformer_model(
        model="bert", vocab_size=args.vocab, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate, max_position_embeddings=args.length,
        with_pool=True, recompute="recompute" in modes, dropout_rate=0.1)
    if "lora" in modes:
        enable_lora(encoder, rank=8)  # float32 adapters on a bfloat16 base too
    if "bf16" in modes:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    probs = keras.layers.Dense(2, activation="softmax", dtype="float32")(encoder.output)
    model = keras.Model(encoder.inputs, probs)
    steps = 4 if "accumulation" in modes else 1
    model.compile(AdamW(1e-5, accumulation_steps=steps), "sparse_categorical_crossentropy")
    return model, lambda ids: [ids, 0 * ids]


def child(args):
    start_available = available_bytes()
    limit = min(args.memory_gib * GIB, current_rss_bytes() + 0.92 * start_available)
    watchdog(limit)
    import numpy as np

    modes = MODES.get(args.child, set())
    if args.child == "keras_hub":
        model, inputs_of = keras_hub_model(args)
    else:
        model, inputs_of = keraformer_model(args, modes)
    micro = 4 if "accumulation" in modes else 1
    if args.batch % micro:
        raise SystemExit(f"--batch {args.batch} must be a multiple of {micro} for "
                         f"{args.child}")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, args.vocab, (args.batch, args.length)).astype("int32")
    labels = rng.integers(0, 2, args.batch)
    size = args.batch // micro
    chunks = [(inputs_of(ids[i:i + size]), labels[i:i + size])
              for i in range(0, args.batch, size)]

    def step():
        for x, y in chunks:
            loss = model.train_on_batch(x, y)
        return float(np.asarray(loss))

    built = peak_rss_bytes()
    losses = [step()]  # traces the train step
    start = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step())
    seconds = (time.perf_counter() - start) / args.steps
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    print(json.dumps({"peak_gib": peak_rss_bytes() / GIB, "built_gib": built / GIB,
                      "seconds_per_example": seconds / args.batch, "step_s": seconds,
                      "params": model.count_params(), "trainable": trainable,
                      "losses": losses, "micro_batch": size}), flush=True)


def run_child(config, args, batch):
    command = [sys.executable, os.path.abspath(__file__), "--child", config, "--batch",
               str(batch)] + [f"--{k}={v}" for k, v in (
                   ("layers", args.layers), ("hidden", args.hidden), ("heads", args.heads),
                   ("intermediate", args.intermediate), ("length", args.length),
                   ("vocab", args.vocab), ("steps", args.steps),
                   ("memory-gib", args.memory_gib))]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{config} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def auto_batch(args):
    """Largest multiple of 4 whose KerasHub float32 peak, linear in the batch through the
    peaks measured at batches 1 and 2, stays under ``--machine-gib``."""
    one, two = (run_child("keras_hub", args, batch) for batch in (1, 2))
    for name, result in (("1", one), ("2", two)):
        if "exceeded_gib" in result:
            raise SystemExit(f"KerasHub at batch {name} passed {result['exceeded_gib']:.1f} GiB")
    slope = two["peak_gib"] - one["peak_gib"]
    fixed = one["peak_gib"] - slope
    batch = int((args.machine_gib - fixed) / slope) // 4 * 4
    print(f"KerasHub float32 peak: {one['peak_gib']:.2f} GiB at batch 1, {two['peak_gib']:.2f} "
          f"at batch 2: {fixed:.2f} + {slope:.2f} per example; batch {batch} projects to "
          f"{fixed + slope * batch:.2f} GiB of {args.machine_gib} GiB", flush=True)
    if batch < 4:
        raise SystemExit("KerasHub does not fit a batch of 4")
    return batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="BERT-large: 24")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--length", type=int, default=512, help="tokens per row, no padding")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--batch", default="auto", help="an int (a multiple of 4) or auto")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--machine-gib", type=float, default=23.0,
                        help="memory KerasHub's step may project to for --batch auto")
    parser.add_argument("--memory-gib", type=float, default=23.0,
                        help="a child past this resident set (or the free memory) is ended")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--child", choices=CONFIGS)
    args = parser.parse_args()
    if args.child:
        args.batch = int(args.batch)
        return child(args)
    batch = auto_batch(args) if args.batch == "auto" else int(args.batch)
    print(f"BERT {args.layers} x {args.hidden}, {args.heads} heads, {args.intermediate} "
          f"intermediate, length {args.length}, batch {batch}, {args.steps} timed steps",
          flush=True)
    results = {}
    for config in args.configs.split(","):
        results[config] = run_child(config, args, batch)
        print(config, json.dumps(results[config]), flush=True)
    reference = results.get("keras_hub")
    print("\n| configuration | micro-batch | trainable params | peak memory GiB | "
          "x KerasHub | s / example | x KerasHub |")
    print("|---|---|---|---|---|---|---|")
    for config, result in results.items():
        if "exceeded_gib" in result:
            print(f"| {config} | | | > {result['exceeded_gib']:.1f} (ended) | | | |")
            continue
        memory = time_ratio = ""
        if reference and "peak_gib" in reference:
            memory = f"**{result['peak_gib'] / reference['peak_gib']:.3f}**"
            ratio = result["seconds_per_example"] / reference["seconds_per_example"]
            time_ratio = f"**{ratio:.2f}**"
        print(f"| {config} | {result['micro_batch']} | {result['trainable'] / 1e6:.2f}M | "
              f"{result['peak_gib']:.2f} | {memory} | {result['seconds_per_example']:.2f} | "
              f"{time_ratio} |")


if __name__ == "__main__":
    main()
