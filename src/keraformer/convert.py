"""``keraformer convert`` and ``keraformer inspect``: checkpoints between formats, from a shell.

``keraformer convert SRC DST --to hf|google|keraformer [--model NAME] [--overwrite]`` loads
the checkpoint directory ``SRC`` (any format :func:`keraformer.models.load_pretrained` reads:
Google TF, Hugging Face safetensors, sharded safetensors or ``tf_model.h5``, keraformer's own
save, or ``hf://org/name``) and writes it to the directory ``DST`` in the target format with the
builders' own writers (``save_pretrained``, ``save_weights_as_checkpoint``, ``save``). A
family the target cannot hold is refused by name before anything is loaded (RoFormerV2 and
GAU-α have no Hugging Face architecture). ``DST`` appears complete or not at all: everything
is written into a staging folder beside it, then renamed into place. Heads the checkpoint
holds (pooler, MLM, NSP) are kept in every target.

``keraformer inspect DIR`` says what a checkpoint directory holds — format, family, layers,
parameters, dtypes, files — from its config and the tensor headers, without building a
model or reading the weights.

Both are also ``python -m keraformer.convert convert ...`` / ``... inspect ...``.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time

TARGETS = ("hf", "google", "keraformer")
# families a target format cannot hold, and why (checked before anything is loaded)
CANNOT_HOLD = {
    "hf": {"roformer_v2": "RoFormerV2 has no Hugging Face (transformers) architecture",
           "gau_alpha": "GAU-α has no Hugging Face (transformers) architecture"},
}
# Google checkpoints as their families were released: weights prefix and config name
GOOGLE_NAMES = {"t5": ("model.ckpt", "config.json"), "t5.1.1": ("model.ckpt", "config.json"),
                "mt5": ("model.ckpt", "config.json")}
GOOGLE_DEFAULT_NAMES = ("bert_model.ckpt", "bert_config.json")
FORMAT_NAMES = {"google": "Google TF checkpoint", "safetensors": "Hugging Face safetensors",
                "sharded": "Hugging Face sharded safetensors", "h5": "Hugging Face tf_model.h5",
                "keraformer": "keraformer save"}
PROGRESS_BYTES = 64 * 2**20  # show write progress for checkpoints at least this large


# -- inspect ---------------------------------------------------------------------------------

def tensor_headers(source):
    """``{name: (dtype_name, shape)}`` of the checkpoint ``source`` (a ``loading.Source``),
    read from headers and indexes only: no tensor data is read."""
    from keraformer import checkpoints

    if source.kind in ("safetensors", "sharded"):
        files = [source.weights]
        if source.kind == "sharded":
            with open(source.weights) as f:
                index = checkpoints.strict_json(f.read(), f"index {source.weights!r}")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise ValueError(f"sharded index {source.weights!r} has no 'weight_map' object")
            folder = os.path.dirname(source.weights)
            roots = checkpoints.shard_roots(folder)
            files = [checkpoints.shard_path(source.weights, folder, shard, roots)
                     for shard in sorted(set(weight_map.values()), key=str)]
        headers = {}
        for path in files:
            fd, size = checkpoints.open_regular_file(path, "safetensors file")
            try:
                _, layout, _ = checkpoints.safetensors_layout(path, fd, size)
            finally:
                os.close(fd)
            headers.update({name: (dtype.name, shape)
                            for name, (dtype, shape, _, _) in layout.items()})
        return headers
    if source.kind == "google":
        import tensorflow as tf

        prefix = checkpoints.find_tf_checkpoint(source.weights)
        try:
            reader = tf.train.load_checkpoint(prefix)
            shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
        except (tf.errors.OpError, ValueError, RuntimeError) as error:
            raise ValueError(f"cannot read TF checkpoint {prefix!r}: {error}") from None
        return {name: (dtypes[name].name, tuple(shape)) for name, shape in shapes.items()}
    import h5py  # tf_model.h5 and keraformer's Keras weights file

    checkpoints.check_regular_file(source.weights, "HDF5 file")
    headers = {}
    with h5py.File(source.weights, "r") as f:
        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                headers[name[:-2] if name.endswith(":0") else name] = (item.dtype.name,
                                                                       tuple(item.shape))
        f.visititems(visit)
    return headers


def read_json(path):
    with open(path) as f:
        value = json.load(f)
    if not isinstance(value, dict):
        raise ValueError(f"{path!r} must hold a JSON object; it holds a "
                         f"{type(value).__name__}")
    return value


def family_of(source, config, names, model=None):
    """The ``MODELS`` name of a detected checkpoint (``model`` when given)."""
    from keraformer.models import builders

    if source.kind == "keraformer":
        return config["model"]
    if model is not None:
        builders.builder_class(model)  # refuses an unknown name
        return model
    found = builders.model_of(config) if config is not None else None
    if found is None and source.kind == "google":
        found = builders.model_of_names(names, os.path.dirname(source.weights))
    return found or "bert"


def layer_count(config):
    """Layers a config declares: ``(encoder, decoder)`` (decoder ``None`` for encoders)."""
    if "num_layers" in config or "d_model" in config:  # T5 (Hugging Face or bert4keras keys)
        encoder = config.get("num_layers", config.get("num_hidden_layers"))
        return encoder, config.get("num_decoder_layers", encoder)
    return config.get("num_hidden_layers"), None


def describe(path, model=None):
    """What the checkpoint directory ``path`` holds, without building a model: a dict with
    ``path``, ``format``, ``family``, ``layers`` (``(encoder, decoder)``), ``parameters``,
    ``dtypes`` (``{dtype: tensors}``), ``tensors``, ``files`` (``{name: bytes}``) and
    ``options`` (a keraformer save's builder options).

    Example:

        >>> import tempfile, keras
        >>> from keraformer.models import build_transformer_model
        >>> builder = build_transformer_model(
        ...     vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        ...     intermediate_size=16, return_keras_model=False)
        >>> folder = tempfile.mkdtemp()
        >>> builder.save(folder)
        >>> info = describe(folder)
        >>> info["format"], info["family"], info["layers"], info["parameters"]  # 512 positions
        ('keraformer', 'bert', (2, None), 5568)
    """
    from keraformer.models import loading

    path = os.fspath(path)
    if path.startswith(loading.HUB_PREFIX):
        path = loading.hub_snapshot(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`SRC` {path!r} is not a checkpoint directory"
                                + (" (it is a file)" if os.path.isfile(path) else
                                   " (it does not exist)"))
    source = loading.detect(path)
    config = read_json(source.config) if source.config else None
    names = tensor_headers(source)
    options = {}
    if source.kind == "keraformer":
        options, model_config = config.get("options", {}), config.get("config", {})
    else:
        model_config = config or {}
    weights = {name: info for name, info in names.items()
               if not loading.TRAINING_STATE.search(name)}
    dtypes = {}
    for dtype, _ in weights.values():
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    files = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full) and not name.startswith("."):
            files[name] = os.path.getsize(full)
    return {"path": path, "format": source.kind,
            "family": family_of(source, config, names, model),
            "layers": layer_count(model_config), "parameters": sum(
                math.prod(shape) for _, shape in weights.values()),
            "dtypes": dtypes, "tensors": len(weights), "files": files, "options": options}


def summary(info):
    """The lines that ``inspect`` prints for a :func:`describe` dict."""
    encoder, decoder = info["layers"]
    layers = f"{encoder}" if decoder is None else f"{encoder} encoder + {decoder} decoder"
    dtypes = ", ".join(f"{dtype} ({count} tensors)" for dtype, count in
                       sorted(info["dtypes"].items()))
    lines = [f"{info['path']}",
             f"  format:     {info['format']} ({FORMAT_NAMES.get(info['format'], '')})",
             f"  family:     {info['family']}",
             f"  layers:     {layers}",
             f"  parameters: {info['parameters']:,} in {info['tensors']} tensors",
             f"  dtype:      {dtypes or 'none'}"]
    if info["options"]:
        lines.append(f"  options:    {json.dumps(info['options'], sort_keys=True)}")
    lines.append("  files:      " + ", ".join(f"{name} ({readable(size)})"
                                              for name, size in info["files"].items()))
    return lines


def readable(size):
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


# -- convert ---------------------------------------------------------------------------------

class Progress:
    """Reports a long write on ``stream``: a background thread polls how many bytes the
    staging folder holds against ``expected`` and prints the share every ``every`` seconds.
    Silent when ``expected`` is below ``threshold`` bytes."""

    def __init__(self, folder, expected, stream, threshold=PROGRESS_BYTES, every=1.0):
        self.folder, self.expected, self.stream = folder, expected, stream
        self.active = stream is not None and expected >= threshold
        self.every, self.done = every, threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def written(self):
        total = 0
        for root, _, files in os.walk(self.folder):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:  # renamed or removed while we looked
                    pass
        return total

    def poll(self):
        while not self.done.wait(self.every):
            share = min(self.written() / self.expected, 1.0)
            print(f"  writing: {share:4.0%} of about {readable(self.expected)}",
                  file=self.stream, flush=True)

    def __enter__(self):
        if self.active:
            self.thread.start()
        return self

    def __exit__(self, error_type, *exc):
        self.done.set()
        if self.active:
            self.thread.join()
            if error_type is None:
                print(f"  writing: 100% ({readable(self.written())} written)", file=self.stream,
                      flush=True)


def check_destination(dst, overwrite):
    """Refuse a ``DST`` that is a file, or a non-empty directory without ``overwrite``."""
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise FileExistsError(f"`DST` {dst!r} exists and is not a directory")
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise FileExistsError(f"`DST` {dst!r} exists and is not empty; pass --overwrite "
                              f"(overwrite=True) to replace it")


def write_google(builder, folder):
    """``builder``'s weights as a Google TF checkpoint and its config, as released."""
    prefix, config_name = GOOGLE_NAMES.get(builder.model_name, GOOGLE_DEFAULT_NAMES)
    config = builder.config
    builder.save_weights_as_checkpoint(os.path.join(folder, prefix))
    with open(os.path.join(folder, config_name), "x") as f:
        json.dump(config, f, indent=2, sort_keys=True, default=json_default)
        f.write("\n")


def json_default(value):
    import numpy as np
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"config value {value!r} is not JSON-serializable")


def write_target(builder, folder, to):
    if to == "hf":
        try:
            builder.save_pretrained(folder)
        except NotImplementedError as error:
            raise ValueError(f"`--to hf`: {error}") from None
    elif to == "google":
        write_google(builder, folder)
    else:
        builder.save(folder)


def heads_of(builder):
    """Builder options that keep the checkpoint heads a default load carried aside (pooler,
    MLM, NSP): keraformer's own format saves only the model's weights."""
    heads = getattr(builder, "HEADS", {})
    return {option: True for option, prefix in heads.items()
            if any(name.startswith(prefix) for name in builder.carried_heads)}


def place(staging, dst):
    """Rename the complete ``staging`` folder to ``dst`` (an empty or absent directory: one
    atomic rename; a full one: the old folder is renamed aside first, then removed)."""
    if os.path.isdir(dst) and not os.listdir(dst):
        os.rmdir(dst)
    aside = None
    if os.path.exists(dst):
        aside = tempfile.mkdtemp(prefix=".keraformer-replaced-", dir=os.path.dirname(dst))
        os.rmdir(aside)
        os.rename(dst, aside)
    os.rename(staging, dst)
    from keraformer import checkpoints
    checkpoints.fsync_path(os.path.dirname(dst))
    if aside is not None:
        shutil.rmtree(aside)


def convert(src, dst, to, model=None, overwrite=False, out=None, progress=None,
            progress_bytes=PROGRESS_BYTES):
    """Convert the checkpoint directory ``src`` into directory ``dst`` in format ``to``
    (``"hf"``, ``"google"`` or ``"keraformer"``); ``model`` names the family when ``src``
    cannot tell it (a Google checkpoint of RoBERTa looks like BERT); ``overwrite`` replaces
    a non-empty ``dst``. Prints what it wrote on ``out`` (default: standard output) and
    progress on ``progress`` (default: none; the command line uses standard error); returns
    the :func:`describe` dict of ``dst``.

    Example:

        >>> import io, os, tempfile
        >>> from keraformer.models import build_transformer_model
        >>> builder = build_transformer_model(
        ...     vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        ...     intermediate_size=16, return_keras_model=False)
        >>> src = tempfile.mkdtemp()
        >>> builder.save(src)
        >>> dst = os.path.join(tempfile.mkdtemp(), "hf")
        >>> info = convert(src, dst, "hf", out=io.StringIO())
        >>> sorted(info["files"]), info["parameters"]
        (['config.json', 'model.safetensors'], 5568)
    """
    out = sys.stdout if out is None else out
    if to not in TARGETS:
        raise ValueError(f"`--to` must be one of {list(TARGETS)}; received {to!r}")
    src, dst = os.fspath(src), os.path.abspath(os.fspath(dst))
    check_destination(dst, overwrite)
    info = describe(src, model)
    family = info["family"]
    if family in CANNOT_HOLD.get(to, {}):
        raise ValueError(f"`--to {to}` cannot hold the {family!r} checkpoint in {src!r}: "
                         f"{CANNOT_HOLD[to][family]}; convert it --to google or --to "
                         f"keraformer")
    if model is not None and info["format"] == "keraformer" and model != family:
        raise ValueError(f"`--model {model}` disagrees with {src!r}, a keraformer save of "
                         f"{family!r}")
    from keraformer.models import load_pretrained

    say = (lambda text: print(text, file=progress, flush=True)) if progress else (
        lambda text: None)
    started = time.perf_counter()
    say(f"reading {src} ({info['format']}, {family}, {info['parameters']:,} parameters, "
        f"{readable(sum(info['files'].values()))})")
    load_model = None if info["format"] == "keraformer" else family
    builder = load_pretrained(src, model=load_model, return_keras_model=False)
    if to == "keraformer" and heads_of(builder):
        heads = heads_of(builder)  # build them so that the save keeps their weights
        say(f"building the checkpoint's heads {sorted(heads)} to keep them")
        builder = load_pretrained(src, model=load_model, return_keras_model=False, **heads)
    say(f"loaded in {time.perf_counter() - started:.1f} s; writing {dst} ({to})")
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".keraformer-staging-convert-", dir=parent)
    try:
        with Progress(staging, 4 * info["parameters"], progress, progress_bytes):
            write_target(builder, staging, to)
        place(staging, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written = describe(dst)
    print(f"wrote {dst} in {time.perf_counter() - started:.1f} s", file=out)
    for line in summary(written)[1:]:
        print(line, file=out)
    if written["family"] != family:
        print(f"  note:       {family!r} is written as a {written['family']!r} checkpoint (the "
              f"same architecture and outputs); load it with model={family!r} to keep the "
              f"name", file=out)
    if set(written["dtypes"]) != set(info["dtypes"]):
        print(f"  note:       the source holds {sorted(info['dtypes'])}; the builders load "
              f"weights as {sorted(written['dtypes'])}", file=out)
    return written


# -- command line ----------------------------------------------------------------------------

def parser():
    main = argparse.ArgumentParser(
        prog="keraformer", description="Convert and inspect Transformer checkpoints "
        "(Google TF, Hugging Face, keraformer).")
    commands = main.add_subparsers(dest="command", required=True, metavar="{convert,inspect}")
    convert_ = commands.add_parser(
        "convert", help="write the checkpoint directory SRC to DST in another format")
    convert_.add_argument("src", metavar="SRC",
                          help="checkpoint directory (Google TF, Hugging Face, keraformer) or "
                               "hf://org/name")
    convert_.add_argument("dst", metavar="DST", help="output directory (written atomically)")
    convert_.add_argument("--to", required=True, metavar="{hf,google,keraformer}",
                          help="target format")
    convert_.add_argument("--model", default=None, metavar="NAME",
                          help="family when SRC cannot tell it: bert, roberta, roformer, "
                               "roformer_v2, gau_alpha, t5, t5.1.1, mt5")
    convert_.add_argument("--overwrite", action="store_true",
                          help="replace a non-empty DST")
    convert_.add_argument("--quiet", action="store_true", help="no progress on stderr")
    inspect_ = commands.add_parser("inspect", help="say what a checkpoint directory holds")
    inspect_.add_argument("dir", metavar="DIR")
    inspect_.add_argument("--model", default=None, metavar="NAME",
                          help="family when DIR cannot tell it")
    inspect_.add_argument("--json", action="store_true", help="print the description as JSON")
    return main


def main(argv=None):
    """The ``keraformer`` console script; returns the exit status (2 for a refused input, 1
    when the system fails a read or write, e.g. a full disk).

    Example:

        >>> import os, tempfile
        >>> from keraformer.convert import main
        >>> main(["inspect", os.path.join(tempfile.mkdtemp(), "missing")])   # error on stderr
        2
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] not in ("convert", "inspect", "-h", "--help"):
        argv = ["convert", *argv]  # `python -m keraformer.convert SRC DST --to ...`
    args = parser().parse_args(argv)
    try:
        if args.command == "convert":
            convert(args.src, args.dst, args.to, model=args.model, overwrite=args.overwrite,
                    progress=None if args.quiet else sys.stderr)
        else:
            info = describe(args.dir, args.model)
            print(json.dumps(info, indent=2) if args.json else "\n".join(summary(info)))
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        print(f"keraformer {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine's refusal (disk full, permission), not the input's
        print(f"keraformer {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
