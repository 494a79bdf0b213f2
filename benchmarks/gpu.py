"""The one prepared GPU run: keraformer on JAX against transformers on PyTorch, side by side.

One command measures, in one process (the test run in a child process):

1. ``correctness`` — the library's fast numerical tests (attention cores, positions, BERT /
   RoFormer / GAU-α / T5 against their references, generation tokens) run with pytest under
   the active backend; and a BERT forward pass against ``transformers`` with the same random
   weights, float32 (stated tolerance 1e-4 at full float32 matmul precision) and
   ``mixed_bfloat16`` (its error against float32 must stay within 2× that of
   ``transformers`` under ``torch.autocast`` bfloat16 on the same inputs).
2. ``bert`` — a BERT-base training step (pooled 2-way classifier, AdamW, dropout 0.1),
   ``mixed_bfloat16`` against ``BertForSequenceClassification`` under ``torch.autocast``
   bfloat16 (and ``torch.compile`` when the time budget allows), 32×128 and 8×512: tokens/s
   and model FLOP utilisation (matmul FLOPs of the step over the bfloat16 matrix rate that
   this script measures on the card). Targets: ≥ 40% of that rate, ≥ 1.0× transformers.
3. ``t5`` — T5-base (random weights written once as a Hugging Face directory, loaded by both)
   greedy and 4-beam generation of exactly 128 new tokens at batch 1 and 32, float32 at full
   matmul precision on both sides: seconds per call and whether the tokens are equal.
   Target ≥ 1.0× at every row.
4. ``attention`` — forward + backward time and compiled peak memory of causal linear, GAU
   mixed-chunk, VQ and windowed attention against causal softmax through
   ``keras.ops.dot_product_attention`` (cuDNN flash attention where JAX offers it), bfloat16,
   batch 1, 8 heads of 64, at 4k, 16k and 64k tokens.
5. ``memory`` — the largest BERT-large batch at length 512 (``mixed_bfloat16``, AdamW) with
   and without ``recompute``: the compiled train step's peak memory at two batch sizes gives
   the per-example cost, the largest batch that fits the device is predicted from it and then
   run once to confirm (JAX only: XLA's compiled memory analysis).

Every figure goes to ``RESULTS/gpu.json`` and ``RESULTS/gpu.md`` (written again after each
section, so a run cut short keeps what it measured) and the table is printed. ``--tiny`` runs
the same code with toy sizes on a CPU in seconds (CI runs it on both backends so this script
cannot rot); the test selection is only collected there, not run. See ``benchmarks/gpu.md``
for the exact device call. Run::

    KERAS_BACKEND=jax python benchmarks/gpu.py [--tiny] [--out DIR] [--sections ...]
                                              [--budget SECONDS]
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and torch share the card
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from generation import best_time  # noqa: E402  (benchmarks/generation.py, beside this script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("correctness", "bert", "t5", "attention", "memory")
# The fast numerical tests: attention cores, positions, builders against their references,
# T5 against transformers, generation tokens.
TEST_FILES = ("tests/attentions", "tests/positions", "tests/models/test_t5.py",
              "tests/core/test_generation.py", "tests/models/test_bert.py",
              "tests/models/test_decoding.py", "tests/models/test_roformer.py",
              "tests/models/test_roformer_v2.py", "tests/models/test_gau_alpha.py")
ABSENT_ON_DEVICE = ("No module named 'tensorflow'", "No module named 'bert4keras'",
                    "No module named 'tf_keras'")

SIZES = {
    "full": dict(
        bert=dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072),
        bert_shapes=[(32, 128), (8, 512)], bert_steps=30,
        check_bert=dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=1024),
        check_shape=(8, 128),
        t5=dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                num_heads=12, feed_forward_proj="relu"),
        t5_batches=[1, 32], t5_new_tokens=128, t5_source=64, repeats=2,
        attention_lengths=[4096, 16384, 65536], window=512,
        large=dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=24,
                   num_attention_heads=16, intermediate_size=4096),
        large_length=512, probe_batches=(8, 16), matmul=8192),
    "tiny": dict(
        bert=dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64),
        bert_shapes=[(4, 16), (2, 32)], bert_steps=3,
        check_bert=dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64),
        check_shape=(2, 16),
        t5=dict(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                feed_forward_proj="relu"),
        t5_batches=[1, 2], t5_new_tokens=6, t5_source=8, repeats=1,
        attention_lengths=[32, 64], window=16,
        large=dict(vocab_size=128, hidden_size=16, num_hidden_layers=1,
                   num_attention_heads=2, intermediate_size=32),
        large_length=16, probe_batches=(2, 4), matmul=256),
}


# -- the run's record -------------------------------------------------------------------------
class Record:
    """Every figure of the run, written as JSON and Markdown after each section."""

    def __init__(self, out, mode, budget):
        self.out, self.start, self.budget = out, time.time(), budget
        self.data = {"mode": mode, "started": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"), "environment": {},
            "sections": {}}

    def seconds_left(self):
        return self.budget - (time.time() - self.start)

    def write(self):
        os.makedirs(self.out, exist_ok=True)
        self.data["wall_seconds"] = round(time.time() - self.start, 1)
        for name, text in (("gpu.json", json.dumps(self.data, indent=1, default=str)),
                           ("gpu.md", markdown(self.data))):
            staging = os.path.join(self.out, f".{name}.partial")
            with open(staging, "w") as handle:
                handle.write(text)
            os.replace(staging, os.path.join(self.out, name))


def environment():
    """Device, driver and library versions."""
    import keras
    import torch
    import transformers

    info = {"keras": keras.__version__, "backend": keras.backend.backend(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "torch_device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else "cpu"}
    if keras.backend.backend() == "jax":
        import jax
        device = jax.devices()[0]
        info.update(jax=jax.__version__, jax_device=f"{device.platform}: {device.device_kind}")
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = "not available"
    return info


def torch_device():
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def full_float32_matmuls(enabled):
    """Full float32 matmul precision (no TF32) in JAX, as PyTorch's default on CUDA."""
    import keras
    if keras.backend.backend() == "jax":
        import jax
        jax.config.update("jax_default_matmul_precision", "highest" if enabled else None)


# -- 1. correctness ---------------------------------------------------------------------------
def run_tests(tiny, seconds):
    """The fast numerical tests in a child pytest under this backend: counts, and every
    failure that is not a module absent on the device (TensorFlow, bert4keras) by name. A run
    cut short by ``seconds`` still counts the results it printed."""
    report = os.path.join(tempfile.mkdtemp(prefix="gpu_tests_"), "junit.xml")
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
               "-p", "no:xdist", f"--junitxml={report}", *TEST_FILES]
    if tiny:
        command.append("--collect-only")
    # float32 means float32: JAX would otherwise multiply float32 on TF32 tensor cores on
    # NVIDIA GPUs (about 1e-3 relative), and the references are exact float32
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_DEFAULT_MATMUL_PRECISION="highest",
               PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    start = time.time()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=seconds)
        stdout, code = done.stdout, done.returncode
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (
            expired.stdout or "")
        code = f"stopped after {seconds:.0f} s"
    result = {"command": " ".join(command[1:]), "exit_code": code,
              "seconds": round(time.time() - start, 1), "tail": stdout.strip().splitlines()[-1:]}
    if tiny:
        result["collected"] = sum(1 for line in stdout.splitlines() if "<Function" in line)
        return result
    if not os.path.exists(report):  # cut short: the verbose lines say what ran
        words = re.findall(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR)", stdout)
        result.update({k: words.count(k.upper()) for k in ("passed", "failed", "skipped")})
        result["failures"] = [line for line in stdout.splitlines()
                              if "::" in line and "FAILED" in line]
        return result
    counts = {"passed": 0, "failed": 0, "skipped": 0, "absent_on_device": 0}
    failures = []
    for case in ElementTree.parse(report).iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if case.find("skipped") is not None:
            counts["skipped"] += 1
        elif problem is None:
            counts["passed"] += 1
        elif any(text in (problem.get("message", "") + (problem.text or ""))
                 for text in ABSENT_ON_DEVICE):
            counts["absent_on_device"] += 1
        else:
            counts["failed"] += 1
            failures.append(f"{case.get('classname')}::{case.get('name')}: "
                            f"{problem.get('message', '')[:300]}")
    result.update(counts, failures=failures)
    return result


def random_hf_bert(config, directory, seed=0):
    """A ``BertForSequenceClassification`` with seeded random weights; its encoder is saved
    as a Hugging Face directory for keraformer to load."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(
        **config, num_labels=2, max_position_embeddings=512))
    hf.bert.save_pretrained(directory)
    return hf


def token_batch(vocab_size, batch, length, seed=0, padded=True):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, (batch, length)).astype("int32")
    if padded:  # every other row ends in padding
        for row in range(1, batch, 2):
            ids[row, length // 2 + row % (length // 2):] = 0
    return ids, np.zeros_like(ids)


def keraformer_bert(directory, policy, **options):
    import keras
    from keraformer.models import load_pretrained

    keras.config.set_dtype_policy(policy)
    try:
        return load_pretrained(directory, **options)
    finally:
        keras.config.set_dtype_policy("float32")


def bert_outputs_check(sizes):
    """keraformer's last hidden state against transformers', float32 and bfloat16."""
    import torch

    config = sizes["check_bert"]
    directory = tempfile.mkdtemp(prefix="gpu_bert_check_")
    hf = random_hf_bert(dict(config, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0), directory)
    encoder = hf.bert.to(torch_device()).eval()
    ids, segments = token_batch(config["vocab_size"], *sizes["check_shape"])
    keep = ids != 0
    with torch.no_grad():
        tensors = dict(input_ids=torch.tensor(ids, dtype=torch.long, device=torch_device()),
                       token_type_ids=torch.tensor(segments, dtype=torch.long,
                                                   device=torch_device()),
                       attention_mask=torch.tensor(keep, dtype=torch.long,
                                                   device=torch_device()))
        reference = encoder(**tensors).last_hidden_state.float().cpu().numpy()
        with torch.autocast(torch_device(), dtype=torch.bfloat16):
            hf_bf16 = encoder(**tensors).last_hidden_state.float().cpu().numpy()
    full_float32_matmuls(True)
    try:
        ours = np.asarray(keraformer_bert(directory, "float32")([ids, segments]))
    finally:
        full_float32_matmuls(False)
    ours_bf16 = np.asarray(keraformer_bert(directory, "mixed_bfloat16")([ids, segments]),
                           dtype="float32")

    def error(x):
        return float(np.abs(x - reference)[keep].max())

    fp32, bf16, hf_err = error(ours), error(ours_bf16), error(hf_bf16)
    return {"shape": list(sizes["check_shape"]), "config": config,
            "float32_max_abs_diff": fp32, "float32_ok": fp32 <= 1e-4,
            "bfloat16_max_abs_diff": bf16, "transformers_bfloat16_max_abs_diff": hf_err,
            "bfloat16_ok": bf16 <= max(2 * hf_err, 0.05),
            "tolerances": "max |diff| over real tokens against transformers float32: float32 "
                          "≤ 1e-4; bfloat16 ≤ max(2 × transformers' own bfloat16 error, 0.05)"}


def correctness(record, sizes, tiny):
    seconds = 300.0 if tiny else max(60.0, min(120.0, record.seconds_left() * 0.3))
    return {"tests": run_tests(tiny, seconds), "bert_outputs": bert_outputs_check(sizes)}


# -- 2. BERT training step --------------------------------------------------------------------
def bert_step_flops(config, batch, length):
    """Matmul FLOPs of one training step (forward ×3): projections, attention scores and
    weighted values, feed-forward, pooler; embeddings' lookups are not matmuls."""
    d, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    tokens = batch * length
    per_layer = 2 * tokens * (4 * d * d + 2 * d * ff) + 4 * batch * length * length * d
    return 3 * (layers * per_layer + 2 * batch * d * d + 2 * batch * d * 2)


def matrix_rate(n):
    """Measured bfloat16 matmul rate of the device through ``keras.ops`` (FLOP/s)."""
    import keras

    a = keras.random.normal((n, n), dtype="bfloat16")
    b = keras.random.normal((n, n), dtype="bfloat16")
    if keras.backend.backend() == "jax":
        import jax
        product = jax.jit(lambda x, y: keras.ops.matmul(x, y))
    else:
        product = keras.ops.matmul

    def run(count=10):
        out = None
        for _ in range(count):
            out = product(a, b)
        keras.ops.convert_to_numpy(out[:1, :1])

    seconds, _ = best_time(run, 3)
    return 10 * 2 * n ** 3 / seconds


def keraformer_train_speed(directory, config, batch, length, steps):
    """Seconds per ``fit`` step of a pooled BERT classifier, ``mixed_bfloat16``."""
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        encoder = keraformer_bert(directory, "mixed_bfloat16", with_pool=True,
                                  dropout_rate=0.1)
        logits = keras.layers.Dense(2, dtype="float32")(encoder.output)
        model = keras.Model(encoder.inputs, logits)
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(keras.optimizers.AdamW(1e-5),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids, segments = token_batch(config["vocab_size"], batch * steps, length, padded=False)
    labels = (ids[:, 0] % 2).astype("int32")
    model.fit([ids[:2 * batch], segments[:2 * batch]], labels[:2 * batch], batch_size=batch,
              epochs=1, verbose=0, shuffle=False)  # compiles
    start = time.perf_counter()
    history = model.fit([ids, segments], labels, batch_size=batch, epochs=1, verbose=0,
                        shuffle=False)
    seconds = (time.perf_counter() - start) / steps
    loss = float(history.history["loss"][-1])
    del model
    return seconds, loss


def torch_train_speed(hf, config, batch, length, steps, compiled=False):
    """Seconds per step of ``BertForSequenceClassification`` under autocast bfloat16."""
    import torch

    model = hf.to(torch_device()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids, segments = token_batch(config["vocab_size"], batch, length, padded=False)
    inputs = dict(input_ids=torch.tensor(ids, dtype=torch.long, device=torch_device()),
                  token_type_ids=torch.tensor(segments, dtype=torch.long,
                                              device=torch_device()),
                  labels=torch.tensor(ids[:, 0] % 2, dtype=torch.long, device=torch_device()))
    forward = torch.compile(model) if compiled else model

    def step():
        with torch.autocast(torch_device(), dtype=torch.bfloat16):
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(3):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    synchronize()
    return (time.perf_counter() - start) / steps, float(loss.detach())


def bert_training(record, sizes, tiny):
    import torch

    config = sizes["bert"]
    rate = matrix_rate(sizes["matmul"])
    directory = tempfile.mkdtemp(prefix="gpu_bert_base_")
    hf = random_hf_bert(config, directory)
    rows = []
    compile_torch = not tiny and torch.cuda.is_available()
    for batch, length in sizes["bert_shapes"]:
        steps = sizes["bert_steps"]
        flops = bert_step_flops(config, batch, length)
        ours, our_loss = keraformer_train_speed(directory, config, batch, length, steps)
        theirs, their_loss = torch_train_speed(hf, config, batch, length, steps)
        row = {"batch": batch, "length": length, "step_flops": flops,
               "keraformer_s": ours, "transformers_s": theirs,
               "keraformer_tokens_per_s": batch * length / ours,
               "transformers_tokens_per_s": batch * length / theirs,
               "keraformer_mfu": flops / ours / rate, "transformers_mfu": flops / theirs / rate,
               "speed_vs_transformers": theirs / ours,
               "losses": [our_loss, their_loss]}
        if compile_torch and record.seconds_left() > 300:
            try:
                compiled, _ = torch_train_speed(hf, config, batch, length, steps, True)
                row.update(transformers_compiled_s=compiled,
                           speed_vs_transformers_compiled=compiled / ours)
            except Exception as error:  # a peer that cannot compile is reported, not hidden
                row["transformers_compiled_error"] = f"{type(error).__name__}: {error}"[:300]
        rows.append(row)
    hf.cpu()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"matrix_rate_flops": rate, "matrix_size": sizes["matmul"], "config": config,
            "steps_timed": sizes["bert_steps"], "rows": rows,
            "targets": "MFU ≥ 0.40 of the measured bfloat16 matrix rate; ≥ 1.0× transformers"}


# -- 3. T5 generation -------------------------------------------------------------------------
def t5_generation(record, sizes, tiny):
    import torch
    import transformers
    from keraformer.models import load_pretrained

    config = dict(sizes["t5"], dropout_rate=0.0, decoder_start_token_id=0, eos_token_id=1,
                  pad_token_id=0)
    directory = tempfile.mkdtemp(prefix="gpu_t5_")
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**config)).eval()
    hf.save_pretrained(directory)
    hf = hf.to(torch_device())
    hf.generation_config.eos_token_id = None  # exactly max_new_tokens
    full_float32_matmuls(True)
    try:
        builder = load_pretrained(directory, return_keras_model=False)
        rng = np.random.default_rng(0)
        rows = []
        new = sizes["t5_new_tokens"]
        for method in ("greedy", "beam 4"):
            for batch in sizes["t5_batches"]:
                if record.seconds_left() < 60:
                    rows.append({"method": method, "batch": batch, "skipped": "time budget"})
                    continue
                sources = rng.integers(2, config["vocab_size"],
                                       (batch, sizes["t5_source"])).astype("int32")
                ids = torch.tensor(sources, dtype=torch.long, device=torch_device())
                beams = 4 if method == "beam 4" else 1
                beam_options = (dict(num_beams=4, length_penalty=1.0, early_stopping=True)
                                if beams > 1 else dict(num_beams=1))

                def theirs():
                    with torch.no_grad():
                        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          max_new_tokens=new, min_new_tokens=new,
                                          do_sample=False, **beam_options)
                    return out.cpu().numpy()[:, 1:]

                options = (dict(method="beam", beam_size=4, length_penalty=1.0,
                                early_stopping=True) if beams > 1 else dict(method="greedy"))

                def ours():
                    return np.asarray(builder.generate(sources, max_length=new, end_id=None,
                                                       loop="device", **options))

                their_s, their_tokens = best_time(theirs, sizes["repeats"])
                our_s, our_tokens = best_time(ours, sizes["repeats"])
                same = (their_tokens.shape == our_tokens.shape
                        and bool(np.array_equal(their_tokens, our_tokens)))
                rows.append({"method": method, "batch": batch, "new_tokens": new,
                             "keraformer_s": our_s, "transformers_s": their_s,
                             "speed_vs_transformers": their_s / our_s, "tokens_equal": same,
                             "rows_equal": int(sum(np.array_equal(a, b) for a, b in
                                                   zip(their_tokens, our_tokens)))})
    finally:
        full_float32_matmuls(False)
    hf.cpu()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"config": config, "source_length": sizes["t5_source"], "rows": rows,
            "precision": "float32, full matmul precision on both sides",
            "target": "≥ 1.0× transformers at every row"}


# -- 4. long sequences ------------------------------------------------------------------------
HEADS, HEAD_DIM = 8, 64


def attention_variants(window):
    """Causal attention functions of ``(q, k, v, codebook)`` by name."""
    import inspect

    import keras
    from keraformer.attentions import dot_product_attention, linear_attention, vq_attention
    from keraformer.attentions.gated import mixed_chunk_attention

    variants = {
        "softmax (keras.ops)": lambda q, k, v, c: keras.ops.dot_product_attention(
            q, k, v, is_causal=True),
        "linear": lambda q, k, v, c: linear_attention(q, k, v, causal=True),
        "GAU mixed-chunk": lambda q, k, v, c: mixed_chunk_attention(q, k, v, causal=True,
                                                                    chunk_size=256),
        "VQ": lambda q, k, v, c: vq_attention(q, k, v, c, causal=True, block_size=128),
    }
    if "window" in inspect.signature(dot_product_attention).parameters:
        variants[f"window {window}"] = lambda q, k, v, c: dot_product_attention(
            q, k, v, causal=True, window=window)
    return variants


def attention_inputs(name, length, dtype):
    import keras

    rng = np.random.default_rng(0)
    if name.startswith("GAU"):
        shapes = [(1, length, 128), (1, length, 128), (1, length, 2 * HEADS * HEAD_DIM)]
    else:
        shapes = [(1, length, HEADS, HEAD_DIM)] * 3
    arrays = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32"), dtype)
              for s in shapes]
    codebook = keras.ops.convert_to_tensor(
        rng.standard_normal((HEADS, 128, HEAD_DIM)).astype("float32"), dtype)
    return arrays, codebook


def gradient_step(attend):
    """``(compiled function of q, k, v, codebook → gradients, peak bytes or None)``."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        def loss(q, k, v, c):
            return keras.ops.sum(keras.ops.cast(attend(q, k, v, c), "float32"))

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step(q, k, v, c):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            value = tf.reduce_sum(tf.cast(attend(q, k, v, c), "float32"))
        return tape.gradient(value, [q, k, v],  # VQ's keys get none through the argmin
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return step


def compiled_peak_bytes(function, *arguments):
    """Peak device memory of a jitted JAX function from XLA's memory analysis (arguments,
    outputs and temporaries), or None on another backend."""
    import keras
    if keras.backend.backend() != "jax":
        return None
    analysis = function.lower(*arguments).compile().memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def device_memory_bytes():
    """Memory the backend may use on the first device (JAX's allocator limit), or None."""
    import keras
    if keras.backend.backend() != "jax":
        return None
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def block(value):
    import keras
    for leaf in keras.tree.flatten(value):
        keras.ops.convert_to_numpy(keras.ops.reshape(leaf, (-1,))[:1])


def long_sequences(record, sizes, tiny):
    dtype = "bfloat16"
    capacity = device_memory_bytes()
    rows = []
    for name, attend in attention_variants(sizes["window"]).items():
        step = gradient_step(attend)
        for length in sizes["attention_lengths"]:
            row = {"variant": name, "length": length}
            rows.append(row)
            if record.seconds_left() < 45:
                row["skipped"] = "time budget"
                continue
            try:
                (q, k, v), codebook = attention_inputs(name, length, dtype)
                peak = compiled_peak_bytes(step, q, k, v, codebook)
                row["peak_bytes"] = peak
                if peak is not None and capacity is not None and peak > capacity:
                    row["skipped"] = f"needs {peak / 2**30:.1f} GiB of {capacity / 2**30:.1f}"
                    continue

                def run():
                    block(step(q, k, v, codebook))

                row["seconds"], _ = best_time(run, 3)
            except Exception as error:  # e.g. out of memory: recorded per row
                row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
    by_length = {}
    for row in rows:
        if row["variant"].startswith("softmax") and "seconds" in row:
            by_length[row["length"]] = row["seconds"]
    for row in rows:
        if "seconds" in row and row["length"] in by_length:
            row["speed_vs_softmax"] = by_length[row["length"]] / row["seconds"]
    return {"dtype": dtype, "batch": 1, "heads": HEADS, "head_dim": HEAD_DIM,
            "device_memory_bytes": capacity, "rows": rows,
            "step": "forward + backward of sum(attention output) w.r.t. q, k, v; causal"}


# -- 5. memory --------------------------------------------------------------------------------
def train_step_memory(config, length, batch, recompute, run=False):
    """Compiled peak bytes of one AdamW step of a pooled BERT classifier (``mixed_bfloat16``)
    at ``batch``; with ``run`` it also executes the step once (True if it ran)."""
    import jax
    import keras
    from keraformer.models import build_transformer_model

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        encoder = build_transformer_model(model="bert", with_pool=True, recompute=recompute,
                                          max_position_embeddings=max(512, length),
                                          dropout_rate=0.1, **config)
        logits = keras.layers.Dense(2, dtype="float32")(encoder.output)
        model = keras.Model(encoder.inputs, logits)
    finally:
        keras.config.set_dtype_policy("float32")
    optimizer = keras.optimizers.AdamW(1e-5)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss(trainable, non_trainable, ids, segments, labels):
        out, non_trainable = model.stateless_call(trainable, non_trainable, [ids, segments],
                                                  training=True)
        return loss_fn(labels, out), non_trainable

    def step(trainable, non_trainable, optimizer_state, ids, segments, labels):
        (value, non_trainable), grads = jax.value_and_grad(loss, has_aux=True)(
            trainable, non_trainable, ids, segments, labels)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads,
                                                               trainable)
        return value, trainable, non_trainable, optimizer_state

    compiled_step = jax.jit(step, donate_argnums=(0, 1, 2))
    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables],
             [v.value for v in optimizer.variables])
    ids = np.ones((batch, length), "int32")
    data = (ids, np.zeros_like(ids), np.zeros((batch,), "int32"))
    peak = compiled_peak_bytes(compiled_step, *state, *data)
    ran = None
    if run:
        try:
            value = compiled_step(*state, *data)[0]
            ran = bool(np.isfinite(float(value)))
        except Exception as error:  # out of memory is the answer here, not a crash
            ran = f"{type(error).__name__}: {str(error)[:200]}"
    del model, optimizer, state
    return peak, ran


def largest_batch(record, sizes, tiny):
    import keras
    if keras.backend.backend() != "jax":
        return {"skipped": "compiled memory analysis needs the JAX backend"}
    capacity = device_memory_bytes()
    if capacity is None:  # JAX on a CPU reports no allocator limit: a toy one for --tiny
        capacity = 64 * 2 ** 20
    config, length = sizes["large"], sizes["large_length"]
    small, big = sizes["probe_batches"]
    rows = []
    for recompute in (False, True):
        if record.seconds_left() < 60:
            rows.append({"recompute": recompute, "skipped": "time budget"})
            continue
        low, _ = train_step_memory(config, length, small, recompute)
        high, _ = train_step_memory(config, length, big, recompute)
        per_example = (high - low) / (big - small)
        fixed = low - small * per_example
        predicted = int((capacity - fixed) // per_example)
        row = {"recompute": recompute, "peak_bytes": {small: low, big: high},
               "per_example_bytes": per_example, "fixed_bytes": fixed,
               "predicted_largest_batch": predicted}
        if record.seconds_left() > 90 and predicted > 0:
            peak = train_step_memory(config, length, predicted, recompute)[0]
            if peak > capacity:  # the cost per example grew: predict again from the far point
                per_example = (peak - high) / (predicted - big)
                predicted = int(big + (capacity - high) // per_example)
                row.update(first_prediction_peak_bytes=peak, predicted_largest_batch=predicted)
            peak, ran = train_step_memory(config, length, predicted, recompute, run=True)
            row.update(confirmed_peak_bytes=peak, confirmed_ran=ran)
        rows.append(row)
    return {"config": config, "length": length, "device_memory_bytes": capacity,
            "policy": "mixed_bfloat16, AdamW, dropout 0.1", "rows": rows}


# -- the table --------------------------------------------------------------------------------
def markdown(data):
    """The run as Markdown tables."""
    env = data["environment"]
    lines = [f"GPU run ({data['mode']}), {data['started']}: "
             f"{env.get('jax_device', env.get('torch_device', '?'))}; "
             f"driver/memory `{env.get('nvidia_smi', '?')}`; keras {env.get('keras')} on "
             f"{env.get('backend')} (JAX {env.get('jax', '-')}), torch {env.get('torch')}, "
             f"transformers {env.get('transformers')}; {data.get('wall_seconds', '?')} s", ""]
    sections = data["sections"]
    for name, section in sections.items():
        if "error" in section:
            lines += [f"**{name}**: failed — {section['error'].splitlines()[-1]}", ""]
    if "correctness" in sections and "tests" in sections["correctness"]:
        tests, check = sections["correctness"]["tests"], sections["correctness"]["bert_outputs"]
        lines.append(f"**Correctness** — tests: {', '.join(f'{k} {tests[k]}' for k in ('passed', 'failed', 'skipped', 'absent_on_device', 'collected', 'status') if k in tests)}"
                     f" ({tests.get('seconds', '?')} s); BERT vs transformers: float32 max |diff| "
                     f"{check['float32_max_abs_diff']:.2e} ({'ok' if check['float32_ok'] else 'MISSED'}), "
                     f"bfloat16 {check['bfloat16_max_abs_diff']:.3f} vs transformers' own bfloat16 "
                     f"{check['transformers_bfloat16_max_abs_diff']:.3f} "
                     f"({'ok' if check['bfloat16_ok'] else 'MISSED'})")
        lines += [f"- failed: {f}" for f in tests.get("failures", [])] + [""]
    if "bert" in sections and "rows" in sections["bert"]:
        bert = sections["bert"]
        lines += [f"**BERT-base training step**, mixed bfloat16, AdamW; measured bfloat16 matrix "
                  f"rate {bert['matrix_rate_flops'] / 1e12:.1f} TFLOP/s", "",
                  "| batch × length | keraformer tokens/s | MFU | transformers tokens/s | MFU "
                  "| × transformers | × torch.compile |", "|---|---|---|---|---|---|---|"]
        for r in bert["rows"]:
            compiled = (f"{r['speed_vs_transformers_compiled']:.2f}×"
                        if "speed_vs_transformers_compiled" in r else "–")
            lines.append(f"| {r['batch']}×{r['length']} | {r['keraformer_tokens_per_s']:,.0f} | "
                         f"{r['keraformer_mfu']:.1%} | {r['transformers_tokens_per_s']:,.0f} | "
                         f"{r['transformers_mfu']:.1%} | **{r['speed_vs_transformers']:.2f}×** | "
                         f"{compiled} |")
        lines.append("")
    if "t5" in sections and "rows" in sections["t5"]:
        lines += ["**T5-base generation**, float32, 128 new tokens, seconds per call", "",
                  "| method | batch | keraformer | transformers | × transformers | tokens |",
                  "|---|---|---|---|---|---|"]
        for r in sections["t5"]["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['method']} | {r['batch']} | – | – | – | {r['skipped']} |")
                continue
            lines.append(f"| {r['method']} | {r['batch']} | {r['keraformer_s']:.3f} | "
                         f"{r['transformers_s']:.3f} | **{r['speed_vs_transformers']:.2f}×** | "
                         f"{'equal' if r['tokens_equal'] else str(r['rows_equal']) + ' rows equal'} |")
        lines.append("")
    if "attention" in sections and "rows" in sections["attention"]:
        rows = sections["attention"]["rows"]
        lengths = sorted({r["length"] for r in rows})
        lines += ["**Long sequences**, causal, bfloat16, batch 1, 8 heads × 64, forward + "
                  "backward: ms (peak GiB) and speed relative to softmax", "",
                  "| variant | " + " | ".join(f"{n // 1024}k" if n >= 1024 else str(n)
                                               for n in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            cells = []
            for n in lengths:
                r = next(r for r in rows if r["variant"] == variant and r["length"] == n)
                peak = (f" ({r['peak_bytes'] / 2**30:.2f} GiB)"
                        if r.get("peak_bytes") is not None else "")
                if "seconds" in r:
                    ratio = (f", {r['speed_vs_softmax']:.2f}×" if "speed_vs_softmax" in r
                             and not variant.startswith("softmax") else "")
                    cells.append(f"{r['seconds'] * 1e3:.1f}{peak}{ratio}")
                else:
                    cells.append(r.get("skipped", r.get("error", "–"))[:60] + peak)
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    if "memory" in sections and "rows" in sections["memory"]:
        memory = sections["memory"]
        lines += [f"**Largest BERT-large batch** at length {memory['length']} "
                  f"({memory['policy']}; {memory['device_memory_bytes'] / 2**30:.1f} GiB usable)",
                  "", "| recompute | GiB per example | predicted largest batch | confirmed |",
                  "|---|---|---|---|"]
        for r in memory["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['recompute']} | – | – | {r['skipped']} |")
                continue
            lines.append(f"| {r['recompute']} | {r['per_example_bytes'] / 2**30:.3f} | "
                         f"{r['predicted_largest_batch']} | {r.get('confirmed_ran', 'not run')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: seconds on a CPU")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run, later rows skipped past it (default "
                             "450; no limit with --tiny)")
    parser.add_argument("--merge", help="an earlier run's gpu.json: its sections are kept "
                                        "unless this run measures them again")
    args = parser.parse_args(argv)
    budget = args.budget if args.budget is not None else (float("inf") if args.tiny else 450.0)
    record = Record(args.out, "tiny" if args.tiny else "full", budget)
    record.data["environment"] = environment()
    if args.merge:
        with open(args.merge) as handle:
            earlier = json.load(handle)
        for name, section in earlier["sections"].items():
            if name not in args.sections:
                record.data["sections"][name] = dict(section, run=earlier["started"])
    sizes = SIZES["tiny" if args.tiny else "full"]
    functions = {"correctness": correctness, "bert": bert_training, "t5": t5_generation,
                 "attention": long_sequences, "memory": largest_batch}
    failed = False
    for name in args.sections:
        start = time.time()
        print(f"[gpu.py] {name} ({record.seconds_left():.0f} s left)", flush=True)
        try:
            record.data["sections"][name] = functions[name](record, sizes, args.tiny)
        except Exception:
            failed = True
            record.data["sections"][name] = {"error": traceback.format_exc()}
            traceback.print_exc()
        record.data["sections"][name]["section_seconds"] = round(time.time() - start, 1)
        record.write()
    print(markdown(record.data))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
