"""Peak memory of loading a 256 MiB safetensors file: keraformer's reader vs the ``safetensors``
package's own NumPy loader.

The file holds float32 tensors with BERT-base names and shapes (hidden 768, intermediate
3072, 6 layers, the vocabulary sized so that the file is 256 MiB). Each loader runs in a fresh
child process that imports only NumPy and the loader; the child resets its peak-RSS mark
(``/proc/self/clear_refs``), loads every tensor, then reads every element (a sum per tensor,
so memory-mapped pages count too), and reports the growth of ``VmHWM`` over the RSS before
loading. The ratio printed is that growth over the file size. Resident pages of a memory map
count in RSS just as copies do, so the comparison is fair to both.

Run: python benchmarks/safetensors_memory.py [--mib 256] [--repeats 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MIB = 2**20
LOADERS = {
    "keraformer": "keraformer.checkpoints.read_safetensors (memory map, read-only views)",
    "safetensors": "safetensors.numpy.load_file",
}


def bert_arrays(mib, layers=6, hidden=768, intermediate=3072, positions=512, seed=0):
    """float32 arrays with BERT-base's Hugging Face names and shapes, the word embedding's
    vocabulary chosen so that the tensors total ``mib`` MiB (to within one row)."""
    shapes = {"bert.embeddings.position_embeddings.weight": (positions, hidden),
              "bert.embeddings.token_type_embeddings.weight": (2, hidden),
              "bert.embeddings.LayerNorm.weight": (hidden,),
              "bert.embeddings.LayerNorm.bias": (hidden,),
              "bert.pooler.dense.weight": (hidden, hidden), "bert.pooler.dense.bias": (hidden,)}
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (hidden, hidden), (hidden,)
        shapes[p + "intermediate.dense.weight"] = (intermediate, hidden)
        shapes[p + "intermediate.dense.bias"] = (intermediate,)
        shapes[p + "output.dense.weight"] = (hidden, intermediate)
        shapes[p + "output.dense.bias"] = (hidden,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + norm + ".weight"] = shapes[p + norm + ".bias"] = (hidden,)
    rest = sum(int(np.prod(s)) for s in shapes.values()) * 4
    vocab = (mib * MIB - rest) // (hidden * 4)
    if vocab < 1:
        raise ValueError(f"`--mib` {mib} is too small for {layers} BERT-base layers")
    shapes["bert.embeddings.word_embeddings.weight"] = (vocab, hidden)
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape, dtype="float32") for name, shape in shapes.items()}


def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(loader, path):
    """Load ``path`` with ``loader``, read every element, print the peak-RSS growth (JSON)."""
    if loader == "keraformer":
        from keraformer.checkpoints import read_safetensors as load
    else:
        from safetensors.numpy import load_file as load
    before = status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    start = time.perf_counter()
    arrays = load(path)
    loaded = time.perf_counter() - start
    checksum = sum(float(a.sum(dtype="float64")) for a in arrays.values())
    print(json.dumps({"peak": status("VmHWM") - before, "seconds": loaded,
                      "checksum": checksum, "tensors": len(arrays)}))


def measure(loader, path):
    result = subprocess.run([sys.executable, __file__, "--child", loader, path],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="file size in MiB")
    parser.add_argument("--repeats", type=int, default=2, help="children per loader; "
                        "the lowest peak is reported")
    parser.add_argument("--child", nargs=2, metavar=("LOADER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    from keraformer.checkpoints import write_safetensors

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.safetensors")
        arrays = bert_arrays(args.mib)
        write_safetensors(path, arrays, {"format": "pt"})
        del arrays
        size = os.path.getsize(path)
        print(f"file: {size / MIB:.1f} MiB, BERT-base shapes (6 layers), float32")
        results = {name: [measure(name, path) for _ in range(args.repeats)] for name in LOADERS}
    sums = {round(r["checksum"], 3) for runs in results.values() for r in runs}
    if len(sums) != 1:
        raise RuntimeError(f"the loaders read different values: checksums {sums}")
    for name, runs in results.items():
        best = min(runs, key=lambda r: r["peak"])
        print(f"{LOADERS[name]}: {best['tensors']} tensors, peak RSS growth "
              f"{best['peak'] / MIB:.1f} MiB = {best['peak'] / size:.2f}x the file, "
              f"load {best['seconds']:.2f} s")
    ours, theirs = (min(r["peak"] for r in results[n]) for n in LOADERS)
    print(f"keraformer / safetensors peak: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
