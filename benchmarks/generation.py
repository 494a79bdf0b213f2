"""Time T5 generation: keraformer against transformers (PyTorch) and KerasHub, same weights.

A T5.1.1 model of t5-small size (google/t5-v1_1-small's shape: vocab 32128, d_model 512,
8+8 layers, 6 heads of 64, gated-GELU d_ff 1024, untied output) with random weights is saved
once as a Hugging Face directory; keraformer loads it with ``load_pretrained``,
``transformers`` with ``from_pretrained``, and KerasHub's ``T5Seq2SeqLM`` (which has no
Hugging Face T5 converter) gets the same arrays assigned to its layers, checked against the
PyTorch logits before it is timed. Each decodes sources of 48 random tokens into exactly 64
new tokens (no end token, so nothing stops early) with greedy search, 4-beam search and top-p
(0.9) sampling, at batch 1 and 8. Each timing is the best of ``--repeats`` runs after one
warm-up run (tracing and compilation excluded). Tokens are compared where decoding is
deterministic (greedy, beam). keraformer is timed with its on-device loop (one compiled
``while_loop``) and its host loop (one compiled step per token). Run::

    python benchmarks/generation.py [--batches 1 8] [--new-tokens 64] [--source-length 48]
                                    [--repeats 3] [--threads 1] [--skip-keras-hub]

``--threads`` (default 1) pins the process to that many cores and gives every library that
many threads; on a shared machine one core each is the comparison that other processes
disturb least.
"""

import argparse
import os
import tempfile
import time

import numpy as np

CONFIG = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
              num_decoder_layers=8, num_heads=6, feed_forward_proj="gated-gelu",
              tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
              eos_token_id=1, pad_token_id=0)
METHODS = {"greedy": {}, "beam 4": {"beam_size": 4}, "top-p 0.9": {"top_p": 0.9}}


def best_time(function, repeats):
    """``(seconds, output)``: the fastest of ``repeats`` runs after a warm-up run."""
    output = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = function()
        times.append(time.perf_counter() - start)
    return min(times), output


def hf_model(directory):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**CONFIG)).eval()
    model.save_pretrained(directory)
    model.generation_config.eos_token_id = None  # never stop: exactly max_new_tokens
    return model


def hf_generate(model, sources, new_tokens, method):
    import torch

    options = {"greedy": dict(do_sample=False, num_beams=1),
               "beam 4": dict(do_sample=False, num_beams=4, length_penalty=1.0,
                              early_stopping=True),
               "top-p 0.9": dict(do_sample=True, top_p=0.9, top_k=0)}[method]
    ids = torch.tensor(sources, dtype=torch.long)

    def run():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 **options)
        return out.numpy()[:, 1:]

    return run


def keraformer_generate(builder, sources, new_tokens, method, loop):
    options = {"greedy": dict(method="greedy"),
               "beam 4": dict(method="beam", beam_size=4, length_penalty=1.0,
                              early_stopping=True),
               "top-p 0.9": dict(method="sample", top_p=0.9, seed=0)}[method]
    return lambda: builder.generate(sources, max_length=new_tokens, end_id=None, loop=loop,
                                    **options)


def keras_hub_model(hf):
    """KerasHub's T5Seq2SeqLM with the Hugging Face model's arrays (T5.1.1: gated
    tanh-approximated GELU, untied head)."""
    import keras
    import keras_hub

    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=CONFIG["vocab_size"], num_layers=CONFIG["num_layers"],
        num_heads=CONFIG["num_heads"], hidden_dim=CONFIG["d_model"],
        intermediate_dim=CONFIG["d_ff"], key_value_dim=CONFIG["d_kv"], dropout=0.0,
        activation=lambda x: keras.activations.gelu(x, approximate=True),
        use_gated_activation=True, tie_embedding_weights=False)
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    backbone.token_embedding.embeddings.assign(state["shared.weight"])
    backbone.token_embedding.reverse_embeddings.assign(state["lm_head.weight"].T)
    for stack in ("encoder", "decoder"):
        for i in range(CONFIG["num_layers"]):
            layer = backbone.get_layer(f"transformer_{stack}_layer_{i}")
            p = f"{stack}.block.{i}.layer."
            attentions = [("0.SelfAttention", layer.self_attention)]
            norms = [("0", layer.self_attention_layer_norm)]
            if stack == "decoder":
                attentions.append(("1.EncDecAttention", layer.cross_attention))
                norms.append(("1", layer.cross_attention_layer_norm))
            for name, attention in attentions:
                for short, dense in (("q", attention.query_projector),
                                     ("k", attention.key_projector),
                                     ("v", attention.value_projector),
                                     ("o", attention.output_projector)):
                    dense.kernel.assign(state[f"{p}{name}.{short}.weight"].T)
                bias = f"{p}{name}.relative_attention_bias.weight"
                if bias in state:
                    attention.relative_attention_bias.assign(state[bias])
            ff = "2" if stack == "decoder" else "1"
            norms.append((ff, layer.layer_norm))
            for index, norm in norms:
                norm.weight.assign(state[f"{p}{index}.layer_norm.weight"])
            layer.input_projector.kernel.assign(state[f"{p}{ff}.DenseReluDense.wi_0.weight"].T)
            layer.gate_projector.kernel.assign(state[f"{p}{ff}.DenseReluDense.wi_1.weight"].T)
            layer.output_projector.kernel.assign(state[f"{p}{ff}.DenseReluDense.wo.weight"].T)
    backbone.encoder_layer_norm.weight.assign(state["encoder.final_layer_norm.weight"])
    backbone.decoder_layer_norm.weight.assign(state["decoder.final_layer_norm.weight"])
    return keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=None)


def keras_hub_check(lm, hf, sources):
    """Largest |logit difference| of KerasHub's model against PyTorch's on one batch."""
    import torch

    decoder = np.zeros((len(sources), 5), "int32")
    decoder[:, 1:] = sources[:, :4]
    out = lm.backbone({"encoder_token_ids": sources, "encoder_padding_mask": sources != 0,
                       "decoder_token_ids": decoder,
                       "decoder_padding_mask": np.ones_like(decoder, bool)})
    logits = np.asarray(lm._logits(out["decoder_sequence_output"]))
    with torch.no_grad():
        reference = hf(input_ids=torch.tensor(sources, dtype=torch.long),
                       decoder_input_ids=torch.tensor(decoder, dtype=torch.long)).logits.numpy()
    return float(np.abs(logits - reference).max())


def keras_hub_generate(lm, sources, new_tokens, method):
    import keras_hub

    sampler = {"greedy": "greedy",
               "beam 4": keras_hub.samplers.BeamSampler(num_beams=4),
               "top-p 0.9": keras_hub.samplers.TopPSampler(p=0.9, seed=0)}[method]
    lm.compile(sampler=sampler)
    batch = len(sources)
    decoder_ids = np.zeros((batch, new_tokens + 1), "int32")
    decoder_mask = np.zeros((batch, new_tokens + 1), bool)
    decoder_mask[:, 0] = True
    inputs = {"encoder_token_ids": sources, "encoder_padding_mask": sources != 0,
              "decoder_token_ids": decoder_ids, "decoder_padding_mask": decoder_mask}

    def run():
        return np.asarray(lm.generate(inputs, stop_token_ids=None)["decoder_token_ids"])[:, 1:]

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--source-length", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--skip-keras-hub", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for every library (0: each library's default)")
    args = parser.parse_args()
    if args.threads:  # before the backends start: XLA's CPU runtime under JAX ignores
        # thread flags, so the whole process is pinned to `threads` cores
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])

    import keras
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)

    from keraformer.models import load_pretrained

    directory = tempfile.mkdtemp(prefix="t5_bench_")
    hf = hf_model(directory)
    builder = load_pretrained(directory, return_keras_model=False)
    rng = np.random.default_rng(0)
    hub = None
    if not args.skip_keras_hub:
        try:
            hub = keras_hub_model(hf)
            sample = rng.integers(2, CONFIG["vocab_size"], (2, args.source_length))
            difference = keras_hub_check(hub, hf, sample.astype("int32"))
            if difference > 1e-2:
                print(f"KerasHub T5 does not reproduce the PyTorch logits with the same "
                      f"weights (max |diff| {difference:.3g}); left out")
                hub = None
            else:
                print(f"KerasHub T5Seq2SeqLM loaded the same weights (max |logit diff| "
                      f"{difference:.1e})")
        except Exception as error:  # report, do not hide, a peer that cannot load
            print(f"KerasHub T5 could not be loaded: {type(error).__name__}: {error}")
            hub = None
    print(f"backend {keras.backend.backend()}, torch threads {torch.get_num_threads()}, "
          f"pinned to {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores; "
          f"{args.source_length} source tokens, {args.new_tokens} new tokens, best of "
          f"{args.repeats}")
    header = (f"{'method':10s} {'batch':>5s} {'transformers':>12s} {'kf device':>10s} "
              f"{'kf host':>8s} {'KerasHub':>9s} {'kf/HF':>6s} {'kf/KH':>6s}  tokens")
    print(header)
    rows = []
    for method in args.methods:
        for batch in args.batches:
            sources = rng.integers(2, CONFIG["vocab_size"], (batch, args.source_length))
            sources = sources.astype("int32")
            times, outputs = {}, {}
            times["hf"], outputs["hf"] = best_time(
                hf_generate(hf, sources, args.new_tokens, method), args.repeats)
            for loop in ("device", "host"):
                times[loop], outputs[loop] = best_time(
                    keraformer_generate(builder, sources, args.new_tokens, method, loop),
                    args.repeats)
            if hub is not None:
                times["hub"], outputs["hub"] = best_time(
                    keras_hub_generate(hub, sources, args.new_tokens, method), args.repeats)
            ours = min(times["device"], times["host"])
            same = "-"
            if method != "top-p 0.9":
                same = ", ".join(
                    f"{name} {'same' if np.array_equal(outputs[name], outputs['device']) else 'DIFFER'}"
                    for name in ("hf", "host", "hub") if name in outputs)
            hub_time = f"{times['hub']:9.2f}" if "hub" in times else f"{'-':>9s}"
            hub_ratio = f"{times['hub'] / ours:6.2f}" if "hub" in times else f"{'-':>6s}"
            line = (f"{method:10s} {batch:5d} {times['hf']:12.2f} {times['device']:10.2f} "
                    f"{times['host']:8.2f} {hub_time} {times['hf'] / ours:6.2f} "
                    f"{hub_ratio}  {same}")
            print(line, flush=True)
            rows.append(line)
    print("seconds per call; kf/HF and kf/KH: speed of keraformer's faster loop relative to "
          "transformers and KerasHub (> 1: keraformer is faster)")


if __name__ == "__main__":
    main()
