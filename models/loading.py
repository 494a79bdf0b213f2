"""The one path by which a checkpoint reaches a builder's variables, in the order it runs.

1. :func:`detect`: what ``path`` is (a keraformer save, a Google TF checkpoint, a Hugging Face
   directory or weights file). Pickles (``pytorch_model.bin``, ``.pt``...) are refused here
   and only here: loading never executes code from a checkpoint. A directory holding two
   formats is an error naming both.
2. :func:`read_arrays`: ``{name: array}`` through the ``keraformer.checkpoints`` readers.
3. ``builder.rename(arrays, source.naming)``: the checkpoint's names to the builder's
   (Google) names.
4. :func:`assign`: every variable of ``builder.variable_mapping()`` present, of the same
   shape and of float data, then assigned. A checkpoint tensor the model does not use is an
   error listing them (``strict=False``: a warning), except those a checkpoint holds
   legitimately: training state (:data:`TRAINING_STATE`: optimizer slots, step counters)
   and heads the user did not ask for (``builder.unused_allowed``: the pooler without
   ``with_pool``, the MLM head without ``with_mlm``, the NSP head without ``with_nsp``).

``build_transformer_model``, ``load_pretrained`` and ``builder.load_weights_from_checkpoint``
all go through :func:`load_weights`.
"""

import dataclasses
import json
import os
import re
import warnings

import numpy as np

from keraformer import checkpoints

from keraformer.checkpoints import OWN_CONFIG
# Hugging Face weight files in order of preference: a hub directory often holds
# model.safetensors and tf_model.h5 with the same weights (and pytorch_model.bin, never read).
HF_WEIGHTS = (("model.safetensors", "safetensors"), ("model.safetensors.index.json", "sharded"),
              ("tf_model.h5", "h5"))
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")
# Training state that TF checkpoints hold beside the weights: Adam/LAMB/Adafactor slots,
# step and loss-scale counters, TF2 object-graph bookkeeping.
TRAINING_STATE = re.compile(
    r"(^|/)(global_step|beta[12]_power|save_counter|_CHECKPOINTABLE_OBJECT_GRAPH|"
    r"good_steps|current_loss_scale|loss_scale)(/|$)|"
    r"/(adam_m|adam_v|Adam|Adam_1|LAMB|LAMB_1|Momentum|RMSProp|RMSProp_1|Adagrad)$|"
    r"_slot_v[cr]?$|/\.OPTIMIZER_SLOT/|/\.ATTRIBUTES/")
NAMING = {"google": "google", "safetensors": "pytorch", "sharded": "pytorch", "h5": "tf_h5",
          "keraformer": "keras"}


@dataclasses.dataclass(frozen=True)
class Source:
    """A detected checkpoint: ``kind`` (``keraformer``, ``google``, ``safetensors``,
    ``sharded`` or ``h5``), the ``weights`` path (a file, or a TF checkpoint prefix) and the
    ``config`` file beside it, if any."""

    kind: str
    weights: str
    config: str = None

    @property
    def naming(self):
        return NAMING[self.kind]


def refuse_pickle(path):
    raise ValueError(f"{path!r} is a pickle-based PyTorch checkpoint, which can execute code "
                     f"when loaded; convert it to safetensors first, e.g. "
                     f"`safetensors.torch.save_file(torch.load(p, weights_only=True), "
                     f"'model.safetensors')`")


HUB_PREFIX = "hf://"
# the files a snapshot download fetches: configs and the weight formats detect() reads
HUB_FILES = ["config.json", "bert_config.json", OWN_CONFIG, "*.weights.h5", "*.safetensors",
             "model.safetensors.index.json", "tf_model.h5", "checkpoint", "*.index",
             "*.data-*"]


def hub_snapshot(name, revision=None):
    """The local folder of Hugging Face Hub model ``name`` (``"hf://org/model"``) at
    ``revision`` (a branch, tag or commit; ``None``: the default branch), through
    ``huggingface_hub.snapshot_download``: its cache (``HF_HUB_CACHE``) is used and filled,
    and with ``HF_HUB_OFFLINE=1`` only the cache is read. Only configs and the weight files
    keraformer reads are fetched (never ``pytorch_model.bin``)."""
    repo_id = name[len(HUB_PREFIX):]
    parts = repo_id.split("/")
    if not repo_id or len(parts) > 2 or not all(parts):
        raise ValueError(f"`path` {name!r} must be hf://<org>/<model> (or hf://<model>)")
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"`revision` must be a branch, tag or commit string; received "
                        f"{revision!r}")
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise ImportError(f"loading {name!r} needs the optional package huggingface_hub; "
                          f"install it with `pip install huggingface_hub`") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    cache = os.environ.get("HF_HUB_CACHE")  # read now: the package reads it on import
    try:
        return huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                                 local_files_only=offline,
                                                 allow_patterns=HUB_FILES)
    except errors.HFValidationError as error:
        raise ValueError(f"`path` {name!r} is not a valid Hub model name: {error}") from None
    except (errors.LocalEntryNotFoundError, errors.RepositoryNotFoundError,
            errors.RevisionNotFoundError) as error:
        where = cache or huggingface_hub.constants.HF_HUB_CACHE
        mode = ("HF_HUB_OFFLINE=1, so only the cache is read" if offline else
                "and the Hub could not provide it")
        raise FileNotFoundError(f"{name!r} (revision {revision or 'main'!r}) is not in the "
                                f"Hugging Face cache {where!r} ({mode}): "
                                f"{type(error).__name__}") from None


def detect(path):
    """The :class:`Source` at ``path``: a directory, a weights file or a TF checkpoint prefix."""
    if path is None:
        raise FileNotFoundError("`checkpoint_path` is None")
    path = os.fspath(path)
    if os.path.isdir(path):
        return detect_directory(path)
    if os.path.isfile(path):
        if path.endswith(PICKLE_SUFFIXES) or path.endswith(".ckpt"):  # .ckpt file: Lightning
            refuse_pickle(path)
        for suffix, kind in ((".safetensors", "safetensors"), (".index.json", "sharded"),
                             (".h5", "h5")):
            if path.endswith(suffix):
                return Source(kind, path)
        if path.endswith(".index"):
            return Source("google", checkpoints.find_tf_checkpoint(path))
        raise ValueError(f"`checkpoint_path` {path!r}: unknown checkpoint format; expected a "
                         f"directory, a .safetensors, .index.json or .h5 file or a TF "
                         f"checkpoint prefix")
    if os.path.exists(path + ".index"):
        return Source("google", path)
    raise FileNotFoundError(f"`checkpoint_path` {path!r} does not exist")


def detect_directory(directory):
    """The :class:`Source` of a checkpoint directory; see :func:`detect`."""
    files = set(os.listdir(directory))
    found = []
    if OWN_CONFIG in files:
        config = os.path.join(directory, OWN_CONFIG)
        found.append(Source("keraformer", os.path.join(directory, own_weights_file(config)),
                            config))
    hf = [(name, kind) for name, kind in HF_WEIGHTS if name in files]
    if hf:
        config = "config.json" if "config.json" in files else None
        found.append(Source(hf[0][1], os.path.join(directory, hf[0][0]),
                            config and os.path.join(directory, config)))
    if "checkpoint" in files or any(name.endswith(".index") for name in files):
        config = next((name for name in ("bert_config.json", "config.json") if name in files),
                      None)
        found.append(Source("google", checkpoints.find_tf_checkpoint(directory),
                            config and os.path.join(directory, config)))
    if len(found) > 1:
        described = " and ".join(f"{s.kind} ({os.path.basename(s.weights)})" for s in found)
        raise ValueError(f"checkpoint directory {directory!r} holds two formats, {described}; "
                         f"keep one of them or pass the weights file itself")
    if found:
        return found[0]
    pickles = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        refuse_pickle(os.path.join(directory, pickles[0]))
    raise ValueError(f"no weights found in {directory!r}: expected {OWN_CONFIG}, "
                     f"model.safetensors, model.safetensors.index.json, tf_model.h5 or a TF "
                     f"checkpoint (*.ckpt.index); it holds {sorted(files)}")


def own_weights_file(config_path):
    """The weights file a keraformer save's ``keraformer.json`` names (saves alternate
    between two names so that a killed save never leaves a half-written file in use)."""
    try:
        with open(config_path) as f:
            description = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{config_path!r} is not a readable keraformer description: "
                         f"{error}") from error
    if not isinstance(description, dict):
        raise ValueError(f"{config_path!r} must hold a JSON object; received "
                         f"{type(description).__name__}")
    return checkpoints.own_weights_name(description, os.path.dirname(config_path))


def read_arrays(source):
    """``{name: array}`` of ``source`` in its own naming (see :attr:`Source.naming`)."""
    readers = {"google": checkpoints.read_tf_checkpoint,
               "safetensors": checkpoints.read_safetensors,
               "sharded": checkpoints.read_sharded_safetensors,
               "h5": checkpoints.read_h5_weights}
    return readers[source.kind](source.weights)


def load_weights(builder, source, strict=True, arrays=None):
    """Load ``source`` into the built ``builder``: read (unless its ``arrays`` were read
    already), rename, check and assign."""
    if builder.model is None:
        raise ValueError(f"{type(builder).__name__}: build() the model before loading weights")
    if source.kind == "keraformer":  # Keras' own weights file; Keras checks the shapes
        builder.model.load_weights(source.weights)
        builder.carried_heads = {}  # its heads are the model's: none from an earlier load
        return
    arrays = builder.rename(read_arrays(source) if arrays is None else arrays, source.naming)
    builder.check_checkpoint(arrays)
    assign(builder, arrays, strict=strict)


def assign(builder, arrays, strict=True):
    """Assign ``{checkpoint_name: array}`` to ``builder.variable_mapping()``: every mapped
    variable must be present with the variable's shape and float data; unused tensors are
    an error (``strict=False``: a warning) unless allowed (see the module docstring)."""
    mapping = builder.variable_mapping()
    missing = [name for name in mapping if name not in arrays]
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} variable(s) the model "
                         f"needs, e.g. {missing[:5]}; it holds e.g. {sorted(arrays)[:5]}")
    unused = sorted(name for name in arrays if name not in mapping
                    and not TRAINING_STATE.search(name) and not builder.unused_allowed(name))
    if unused:
        message = (f"checkpoint holds {len(unused)} tensor(s) that the model does not use: "
                   f"{unused[:20]}{' ...' if len(unused) > 20 else ''}; the config may not "
                   f"match the checkpoint (e.g. fewer layers)")
        if strict:
            raise ValueError(message + "; pass strict=False to load the rest anyway")
        warnings.warn(message, stacklevel=3)
    values = {}
    for name, variable in mapping.items():
        value = builder.to_keras(name, np.asarray(arrays[name]))
        if value.dtype.kind not in "fV":  # V: bfloat16 and other ml_dtypes floats
            raise ValueError(f"checkpoint variable {name!r} holds {value.dtype} data but "
                             f"the model's variable is {variable.dtype}: integer, boolean "
                             f"or other non-float data is never cast into a float weight")
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"checkpoint variable {name!r} has shape {tuple(value.shape)} "
                             f"but the model expects {tuple(variable.shape)}: the config "
                             f"does not match the checkpoint")
        values[name] = value
    for name, variable in mapping.items():
        variable.assign(values[name].astype(variable.dtype))
    builder.carried_heads = carried_heads(builder, arrays, mapping)


def carried_heads(builder, arrays, mapping):
    """The checkpoint's heads the model was built without (a pooler, MLM or NSP head, T5's
    output projection), in checkpoint layout and the model's vocabulary: the builder's
    checkpoint writers put them back, so loading then saving loses nothing."""
    return {name: builder.to_checkpoint(name, builder.to_keras(name, np.asarray(array)))
            for name, array in arrays.items()
            if name not in mapping and not TRAINING_STATE.search(name)
            and builder.unused_allowed(name)}
