"""What every model builder shares: config handling, checkpoint loading and writing.

A builder subclass builds ``self.model`` in ``build()`` and states, in one readable dict
returned by ``variable_mapping()``, which checkpoint variable (Google TF naming) feeds which
Keras variable. ``from_hf_names`` converts a Hugging Face state dict to those names, so every
format loads through the same mapping and the same shape checks.
"""

import json
import os

import keras
import numpy as np

from keraformer import checkpoints


def read_config(config_path=None, **overrides):
    """A model config dict from a JSON file (or none), updated by ``overrides``."""
    config = {}
    if config_path is not None:
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"`config_path` {config_path!r} does not exist")
        with open(config_path) as f:
            config = json.load(f)
    config.update(overrides)
    return config


class Transformer:
    """Base of the model builders. Subclasses define ``build`` and ``variable_mapping``.

    ``config`` holds the checkpoint's hyper-parameters (BERT's ``bert_config.json`` keys or a
    Hugging Face ``config.json``); keyword arguments override config keys.
    """

    checkpoint_prefix = None
    APPLICATIONS = ("encoder",)

    def __init__(self, config, application="encoder", **kwargs):
        if application not in self.APPLICATIONS:
            raise ValueError(f"`application` must be one of {self.APPLICATIONS} for "
                             f"{type(self).__name__}; received {application!r}")
        self.config = dict(config)
        self.application = application
        self.model = None

    def require(self, *keys):
        """Config values for ``keys``; a ``ValueError`` names any that are missing."""
        missing = [key for key in keys if key not in self.config]
        if missing:
            raise ValueError(f"model config is missing {missing}; received keys "
                             f"{sorted(self.config)}")
        return [self.config[key] for key in keys]

    def build(self):
        raise NotImplementedError

    def variable_mapping(self):
        """``{checkpoint_name: keras.Variable}`` for every weight of the model."""
        raise NotImplementedError

    def to_keras(self, name, array):
        """Turn a checkpoint array into the layout of its Keras variable (default: as is)."""
        return array

    def to_checkpoint(self, name, array):
        """Inverse of :meth:`to_keras`, used when writing a checkpoint."""
        return array

    def from_hf_names(self, arrays, transposed):
        """Hugging Face ``{name: array}`` to checkpoint names (``transposed``: PyTorch Linear)."""
        raise NotImplementedError(f"{type(self).__name__} cannot read Hugging Face checkpoints")

    def load_weights_from_checkpoint(self, path):
        """Load a checkpoint (any supported format, see ``read_checkpoint``) into ``self.model``."""
        self.assign(read_checkpoint(path, self))

    def assign(self, arrays):
        """Assign ``{checkpoint_name: array}``; every mapped variable must be present and fit."""
        mapping = self.variable_mapping()
        missing = [name for name in mapping if name not in arrays]
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} variable(s) the model "
                             f"needs, e.g. {missing[:5]}; it holds e.g. {sorted(arrays)[:5]}")
        for name, variable in mapping.items():
            value = self.to_keras(name, np.asarray(arrays[name]))
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(f"checkpoint variable {name!r} has shape {tuple(value.shape)} "
                                 f"but the model expects {tuple(variable.shape)}: the config "
                                 f"does not match the checkpoint")
            variable.assign(value.astype(variable.dtype))

    def checkpoint_arrays(self):
        """``{checkpoint_name: array}`` of the current weights, in checkpoint layout."""
        return {name: self.to_checkpoint(name, keras.ops.convert_to_numpy(variable))
                for name, variable in self.variable_mapping().items()}

    def save(self, directory):
        """Save config, options and weights to ``directory`` (reload with ``load_pretrained``)."""
        os.makedirs(directory, exist_ok=True)
        options = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                   for k, v in self.options.items()}
        with open(os.path.join(directory, "keraformer.json"), "w") as f:
            json.dump({"model": self.model_name, "config": self.config, "options": options},
                      f, indent=2)
        self.model.save_weights(os.path.join(directory, "model.weights.h5"))

    def save_weights_as_checkpoint(self, path):
        """Write the weights as a Google-format TF checkpoint at prefix ``path``."""
        return checkpoints.write_tf_checkpoint(self.checkpoint_arrays(), path)


def hf_weight_files(directory):
    """The Hugging Face weight file(s) of ``directory`` and their kind, or ``(None, None)``."""
    for name, kind in (("model.safetensors", "safetensors"),
                       ("model.safetensors.index.json", "sharded"),
                       ("tf_model.h5", "h5")):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path, kind
    return None, None


def read_hf_arrays(path, kind):
    """Raw arrays of a Hugging Face weight file and whether kernels are PyTorch-transposed."""
    if kind == "safetensors":
        return checkpoints.read_safetensors(path), True
    if kind == "sharded":
        return checkpoints.read_sharded_safetensors(path), True
    return checkpoints.read_h5_weights(path), False


def read_checkpoint(path, builder):
    """``{checkpoint_name: array}`` from a TF checkpoint, a Hugging Face directory or file.

    ``.bin``/``.pt`` pickles are refused: loading never executes code from a checkpoint.
    """
    if path is None or not os.path.exists(path) and not os.path.exists(str(path) + ".index"):
        raise FileNotFoundError(f"`checkpoint_path` {path!r} does not exist")
    if str(path).endswith((".bin", ".pt", ".pth")) or os.path.isdir(path) and not any(
            hf_weight_files(path)) and os.path.exists(os.path.join(path, "pytorch_model.bin")):
        raise ValueError(f"{path!r} is a pickle-based PyTorch checkpoint, which can execute "
                         f"code when loaded; convert it to safetensors first, e.g. "
                         f"`safetensors.torch.save_file(torch.load(p, weights_only=True), "
                         f"'model.safetensors')`")
    if os.path.isdir(path):
        hf_path, kind = hf_weight_files(path)
        if hf_path is None:
            return checkpoints.read_tf_checkpoint(path)
    elif str(path).endswith(".safetensors"):
        hf_path, kind = path, "safetensors"
    elif str(path).endswith(".index.json"):
        hf_path, kind = path, "sharded"
    elif str(path).endswith(".h5"):
        hf_path, kind = path, "h5"
    else:
        return checkpoints.read_tf_checkpoint(path)
    arrays, transposed = read_hf_arrays(hf_path, kind)
    return builder.from_hf_names(arrays, transposed)
