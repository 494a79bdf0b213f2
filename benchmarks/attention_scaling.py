"""Forward+backward time and peak memory of keraformer's attentions as the length grows.

Variants (batch 1, 8 heads of 64, float32): softmax ``dot_product_attention`` (non-causal and
causal), ``linear_attention`` (elu+1, non-causal and causal, chunk 64), GAU mixed-chunk
attention (one head, key size 128, values 1024 = 2 × 512 as in FLASH, chunk 256, causal) and
causal ``vq_attention`` (128 codes, blocks of 128). One step is ``loss = Σ out`` and its
gradient with respect to q, k and v (VQ keys get no gradient without the straight-through
option, so VQ differentiates q and v only). Each variant runs in its own child process over
increasing n; time is the median of repeated steps after a warm-up, memory is the growth of
the process's peak resident set (``ru_maxrss``) over its value before the first step.
Softmax at lengths whose n×n score, probability and gradient tensors (3 × heads × n² × 4
bytes) would exceed ``--memory-gib`` is not run (reported as skipped); its time there is
extrapolated from its fitted power law and marked as such. Prints a table, each variant's
time ratio to softmax (to causal softmax for causal variants) and the fitted exponent of
time ∝ n^p over n >= 1024, and saves a PNG of time vs n. Children keep freed memory in the
heap (``MALLOC_MMAP_MAX_=0``; see ``STEADY_MALLOC``), because glibc otherwise re-faults every
tensor over 32 MiB on each step, which at n = 16k dominates the linear-time variants.

    python benchmarks/attention_scaling.py                 # 512 … 16384, about 5 minutes
    python benchmarks/attention_scaling.py --lengths 512 1024 --plot /tmp/quick.png
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

VARIANTS = {
    "softmax": "dot_product_attention, non-causal",
    "softmax_causal": "dot_product_attention, causal",
    "linear": "linear_attention elu+1, non-causal",
    "linear_causal": "linear_attention elu+1, causal",
    "gau_chunked_causal": "GAU mixed-chunk (chunk 256), causal",
    "vq_causal": "vq_attention (128 codes, block 128), causal",
}
BASELINE = {"softmax": None, "softmax_causal": None, "linear": "softmax",
            "linear_causal": "softmax_causal", "gau_chunked_causal": "softmax_causal",
            "vq_causal": "softmax_causal"}
HEADS, HEAD_DIM = 8, 64
# glibc serves blocks over 32 MiB (its largest mmap threshold) with a fresh mmap and returns
# them on free, so from n = 16k on every step page-faults its big tensors in again (measured:
# 336k minor faults and 0.8 s of kernel time per causal linear step at n = 16k, 40 at 8k).
# Children keep freed memory in the heap instead, so the times measure the attention, not the
# allocator (one arena: thread arenas are mmap-backed and shrink too). `--system-malloc`
# runs with glibc's defaults.
STEADY_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                 "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}


def attention_step(variant, length):
    """A compiled ``tf.function`` computing the loss gradient, and its inputs."""
    import tensorflow as tf  # the benchmark drives the TF backend directly for gradients

    from keraformer.attentions import dot_product_attention, linear_attention, vq_attention
    from keraformer.attentions.gated import mixed_chunk_attention

    rng = np.random.RandomState(0)
    if variant.startswith("gau"):
        shapes = [(1, length, 128), (1, length, 128), (1, length, 2 * HEADS * HEAD_DIM)]
    else:
        shapes = [(1, length, HEADS, HEAD_DIM)] * 3
    inputs = [tf.constant(rng.randn(*s).astype("float32")) for s in shapes]
    codebook = tf.constant(rng.randn(HEADS, 128, HEAD_DIM).astype("float32"))
    attend = {
        "softmax": lambda q, k, v: dot_product_attention(q, k, v),
        "softmax_causal": lambda q, k, v: dot_product_attention(q, k, v, causal=True),
        "linear": lambda q, k, v: linear_attention(q, k, v),
        "linear_causal": lambda q, k, v: linear_attention(q, k, v, causal=True),
        "gau_chunked_causal": lambda q, k, v: mixed_chunk_attention(q, k, v, causal=True,
                                                                    chunk_size=256),
        "vq_causal": lambda q, k, v: vq_attention(q, k, v, codebook, causal=True,
                                                  block_size=128),
    }[variant]
    wrt = [0, 2] if variant.startswith("vq") else [0, 1, 2]

    @tf.function
    def step(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = tf.reduce_sum(attend(q, k, v))
        grads = tape.gradient(loss, [q, k, v])
        return [grads[i] for i in wrt]

    return step, inputs


def measure(variant, lengths, min_seconds):
    """Child process: time and peak-memory growth at each length, as JSON lines."""
    import tensorflow  # noqa: F401  (imported before the baseline is taken)

    import keraformer.attentions  # noqa: F401
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for length in lengths:
        step, inputs = attention_step(variant, length)
        [g.numpy() for g in step(*inputs)]  # trace and warm up
        times, started = [], time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - started < min_seconds
                                 and len(times) < 20):
            tic = time.perf_counter()
            [g.numpy() for g in step(*inputs)]
            times.append(time.perf_counter() - tic)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"variant": variant, "n": length, "seconds": statistics.median(times),
                          "peak_mib": (peak - before) / 1024}), flush=True)


def softmax_fits(length, memory_gib):
    return 3 * HEADS * length * length * 4 <= memory_gib * 2 ** 30


def run_variant(variant, lengths, args):
    if variant.startswith("softmax"):
        lengths = [n for n in lengths if softmax_fits(n, args.memory_gib)]
    command = [sys.executable, __file__, "--child", variant, "--min-seconds",
               str(args.min_seconds), "--lengths", *map(str, lengths)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if not args.system_malloc:
        env.update(STEADY_MALLOC)
    rows, deadline = {}, time.monotonic() + args.timeout
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, env=env) as child:
        for line in child.stdout:  # one JSON line per finished length
            if line.startswith("{"):
                row = json.loads(line)
                rows[row["n"]] = row
                print(f"  n = {row['n']:>6}: {row['seconds'] * 1e3:9.1f} ms", flush=True)
            if time.monotonic() > deadline:
                child.kill()
                print(f"  {variant}: stopped after --timeout {args.timeout:.0f} s")
                break
    return rows


def growth_exponent(results, minimum=1024):
    """Least-squares slope of log(time) against log(n) over n >= ``minimum``."""
    points = [(n, r["seconds"]) for n, r in sorted(results.items()) if n >= minimum]
    if len(points) < 2:
        return float("nan")
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def softmax_time(results, n):
    """Measured softmax time, or ``(extrapolated time, True)`` from its fitted power law."""
    if n in results:
        return results[n]["seconds"], False
    points = sorted(results.items())[-3:]
    slope, intercept = np.polyfit(np.log([p[0] for p in points]),
                                  np.log([p[1]["seconds"] for p in points]), 1)
    return float(np.exp(intercept + slope * np.log(n))), True


def report(all_results, lengths, args):
    print(f"\nforward+backward, batch 1, {HEADS} heads × {HEAD_DIM}, float32; "
          f"time in ms (peak RSS growth in MiB)")
    print(f"{'variant':<20}" + "".join(f"{n:>18}" for n in lengths))
    for variant, results in all_results.items():
        cells = []
        for n in lengths:
            if n in results:
                cells.append(f"{results[n]['seconds'] * 1e3:9.1f} ({results[n]['peak_mib']:5.0f})")
            else:
                cells.append("skipped (memory)" if variant.startswith("softmax") else "failed")
        print(f"{variant:<20}" + "".join(f"{c:>18}" for c in cells))
    print("\ngrowth exponent p (time ∝ n^p, fitted over n >= 1024) and time ratio "
          "softmax / variant at the largest n ('*' = softmax time extrapolated)")
    for variant, results in all_results.items():
        line = f"{variant:<20} p = {growth_exponent(results):5.2f}"
        base = BASELINE[variant]
        if base and results and all_results.get(base):
            n = max(results)
            reference, extrapolated = softmax_time(all_results[base], n)
            speedup = reference / results[n]["seconds"]
            line += f"   {speedup:7.1f}× faster than {base} at n = {n}{'*' if extrapolated else ''}"
        print(line)
    skipped = [n for n in lengths if not softmax_fits(n, args.memory_gib)]
    if skipped:
        print(f"\nsoftmax not run at n = {skipped}: 3 × {HEADS} × n² float32 tensors need "
              f"{3 * HEADS * max(skipped) ** 2 * 4 / 2 ** 30:.0f} GiB > --memory-gib "
              f"{args.memory_gib}; speed-ups there use the softmax power law fitted on its "
              f"three largest measured lengths.")


def plot(all_results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for variant, results in all_results.items():
        if results:
            ns = sorted(results)
            axis.plot(ns, [results[n]["seconds"] for n in ns], marker="o",
                      label=VARIANTS[variant])
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("sequence length n")
    axis.set_ylabel("forward + backward time (s)")
    axis.set_title(f"keraformer attention scaling (batch 1, {HEADS}×{HEAD_DIM}, CPU float32)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot saved to {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--memory-gib", type=float, default=12.0,
                        help="skip softmax where its n×n tensors would need more than this")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="keep repeating a step until this much time has passed")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--system-malloc", action="store_true",
                        help="glibc's default allocator settings (see STEADY_MALLOC)")
    parser.add_argument("--plot", default=os.path.join(os.path.dirname(__file__),
                                                       "attention_scaling.png"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.child, args.lengths, args.min_seconds)
        return
    all_results = {}
    for variant in args.variants:
        print(f"running {variant} …", flush=True)
        all_results[variant] = run_variant(variant, args.lengths, args)
    report(all_results, args.lengths, args)
    plot(all_results, args.plot)


if __name__ == "__main__":
    main()
