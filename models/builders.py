"""``build_transformer_model`` and ``load_pretrained``: the bert4keras-style front door.

``MODELS`` names each builder class by ``module:Class`` so that a model family is imported
only when asked for.
"""

import importlib
import inspect
import json
import os

from keraformer.checkpoints import own_weights_name
from keraformer.models.base import hf_weight_files, read_config

MODELS = {
    "bert": "keraformer.models.bert:BERT",
    "roberta": "keraformer.models.bert:RoBERTa",
    "roformer": "keraformer.models.roformer:RoFormer",
    "roformer_v2": "keraformer.models.roformer:RoFormerV2",
    "gau_alpha": "keraformer.models.roformer:GAUAlpha",
    "t5": "keraformer.models.t5:T5",
    "t5.1.1": "keraformer.models.t5:T5v11",
    "mt5": "keraformer.models.t5:MT5",
}
HF_MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "roformer": "roformer", "mt5": "mt5"}
OWN_CONFIG = "keraformer.json"


def builder_class(model):
    """The builder class registered under ``model``."""
    if model not in MODELS:
        raise ValueError(f"`model` must be one of {sorted(MODELS)}; received {model!r}")
    module, name = MODELS[model].split(":")
    return getattr(importlib.import_module(module), name)


def builder_options(cls):
    return set(inspect.signature(cls.__init__).parameters) - {"self", "config"}


def split_options(cls, kwargs):
    """Keyword arguments the builder takes, and the rest (config overrides). An option of
    another builder that this one lacks (e.g. ``attention`` for BERT) is an error, not a
    config key that nothing reads."""
    accepted = builder_options(cls)
    foreign = set().union(*(builder_options(builder_class(m)) for m in MODELS)) - accepted
    misplaced = sorted(k for k in kwargs if k in foreign)
    if misplaced:
        raise ValueError(f"{cls.__name__} does not take the option(s) {misplaced}; its "
                         f"options are {sorted(accepted)}")
    options = {k: v for k, v in kwargs.items() if k in accepted}
    return options, {k: v for k, v in kwargs.items() if k not in accepted}


def build_transformer_model(config_path=None, checkpoint_path=None, model="bert",
                            application="encoder", return_keras_model=True, **kwargs):
    """Build a model from a config (JSON file and/or keyword config keys), optionally loading
    a checkpoint, as in bert4keras.

    ``model``: ``bert``, ``roberta``, ``roformer``, ``roformer_v2``, ``gau_alpha``, ``t5``,
    ``t5.1.1`` or ``mt5``; ``application``: ``encoder``, ``lm`` or ``unilm``. Builder options
    (``with_pool``, ``with_mlm``, ``keep_tokens``, ``hierarchical_position``, ``max_position``,
    ``recompute``, ``dropout_rate``...) and config keys (``hidden_size``...) are keyword
    arguments. Returns the ``keras.Model``, or the builder (with ``.model``) when
    ``return_keras_model=False``.
    """
    cls = builder_class(model)
    options, overrides = split_options(cls, kwargs)
    builder = cls(read_config(config_path, **overrides), application=application, **options)
    builder.model_name, builder.options = model, {"application": application, **options}
    builder.build()
    if checkpoint_path is not None:
        builder.load_weights_from_checkpoint(checkpoint_path)
    return builder.model if return_keras_model else builder


def detect_format(directory):
    """``(format, config_path, model)`` of a checkpoint directory; see ``load_pretrained``."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"`path` {directory!r} is not a directory")
    files = os.listdir(directory)
    if OWN_CONFIG in files:
        return "keraformer", os.path.join(directory, OWN_CONFIG), None
    config_path = next((os.path.join(directory, name) for name in ("config.json",
                        "bert_config.json") if name in files), None)
    if config_path is None:
        raise ValueError(f"no config (config.json, bert_config.json or {OWN_CONFIG}) in "
                         f"{directory!r}; it holds {sorted(files)}")
    with open(config_path) as f:
        config = json.load(f)
    model_type = config.get("model_type")
    if model_type == "t5":  # T5 1.0 and 1.1 share Hugging Face's model_type
        model_type = "t5.1.1" if config.get("feed_forward_proj", "relu").startswith(
            "gated") else "t5"
    if hf_weight_files(directory)[0] is not None:
        return "huggingface", config_path, HF_MODEL_TYPES.get(model_type, model_type)
    if any(name.endswith(".index") for name in files):
        return "google", config_path, None
    if "pytorch_model.bin" in files:
        return "pytorch-pickle", config_path, None
    raise ValueError(f"no weights found in {directory!r}: expected model.safetensors, "
                     f"model.safetensors.index.json, tf_model.h5 or a TF checkpoint "
                     f"(*.ckpt.index); it holds {sorted(files)}")


def load_pretrained(path, model=None, return_keras_model=True, **kwargs):
    """Build and load the model saved in directory ``path``, detecting its format.

    Google TF (``bert_config.json``/``config.json`` + ``*.ckpt.index``; pass ``model`` when it
    is not BERT), Hugging Face (``config.json`` + ``model.safetensors``, sharded safetensors or
    ``tf_model.h5``; the model follows ``model_type``) and keraformer's own ``save_pretrained``
    folders. ``kwargs`` go to :func:`build_transformer_model`.
    """
    fmt, config_path, detected = detect_format(path)
    if fmt == "keraformer":
        with open(config_path) as f:
            saved = json.load(f)
        builder = build_transformer_model(model=saved["model"], return_keras_model=False,
                                          **{**saved["options"], **saved["config"], **kwargs})
        builder.model.load_weights(os.path.join(path, own_weights_name(saved, path)))
        return builder.model if return_keras_model else builder
    if fmt == "pytorch-pickle":
        raise ValueError(f"{path!r} holds only pytorch_model.bin, a pickle that can execute "
                         f"code when loaded; convert it to model.safetensors first")
    model = model or detected or "bert"
    return build_transformer_model(config_path, path, model=model,
                                   return_keras_model=return_keras_model, **kwargs)
