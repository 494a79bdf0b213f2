"""Time T5 greedy generation: keraformer with the key/value cache, without it, and KerasHub.

A t5-small-sized random model (vocab 32128, d_model 512, 6+6 layers, 8 heads, d_ff 2048,
ReLU, tied output) generates 64 tokens for a batch of 8 sources of 32 tokens, with the end
token never stopping it. Each is timed after one warm-up call (tracing/compilation excluded);
the ratios are printed. Run::

    python benchmarks/t5_generation.py [--steps 64] [--batch 8] [--repeats 2]
"""

import argparse
import time

import numpy as np

CONFIG = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
              feed_forward_proj="relu", dropout_rate=0.0)


def best_time(function, repeats):
    function()  # warm-up: tracing and compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def keraformer_generate(sources, steps, use_cache):
    from keraformer.models import build_transformer_model

    builder = build_transformer_model(model="t5", return_keras_model=False, **CONFIG)
    # no end id: never stop early, always generate `steps` tokens
    builder.end_id = None
    return lambda: builder.generate(sources, max_length=steps, use_cache=use_cache)


def keras_hub_generate(sources, steps):
    import keras_hub

    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=CONFIG["vocab_size"], num_layers=CONFIG["num_layers"],
        num_heads=CONFIG["num_heads"], hidden_dim=CONFIG["d_model"],
        intermediate_dim=CONFIG["d_ff"], key_value_dim=CONFIG["d_kv"], dropout=0.0,
        activation="relu", use_gated_activation=False, tie_embedding_weights=True)
    lm = keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    batch = len(sources)
    decoder_ids = np.zeros((batch, steps + 1), "int32")
    decoder_mask = np.zeros((batch, steps + 1), bool)
    decoder_mask[:, 0] = True
    inputs = {"encoder_token_ids": sources, "encoder_padding_mask": sources != 0,
              "decoder_token_ids": decoder_ids, "decoder_padding_mask": decoder_mask}
    return lambda: lm.generate(inputs, stop_token_ids=None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sources = rng.integers(2, CONFIG["vocab_size"], (args.batch, 32)).astype("int32")
    results = {}
    results["keraformer, cache"] = best_time(
        keraformer_generate(sources, args.steps, True), args.repeats)
    results["keraformer, no cache"] = best_time(
        keraformer_generate(sources, args.steps, False), 1)
    try:
        results["KerasHub T5Seq2SeqLM"] = best_time(keras_hub_generate(sources, args.steps),
                                                    args.repeats)
    except Exception as error:  # report, do not hide, a peer that cannot generate
        print(f"KerasHub T5 could not generate: {type(error).__name__}: {error}")
    for name, seconds in results.items():
        print(f"{name:24s} {seconds:8.3f} s  ({args.batch * args.steps / seconds:7.1f} tokens/s)")
    cached = results["keraformer, cache"]
    print(f"cache speed-up over no cache: {results['keraformer, no cache'] / cached:.2f}x")
    if "KerasHub T5Seq2SeqLM" in results:
        print(f"keraformer (cache) vs KerasHub: {results['KerasHub T5Seq2SeqLM'] / cached:.2f}x")


if __name__ == "__main__":
    main()
