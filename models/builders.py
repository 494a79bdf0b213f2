"""``build_transformer_model`` and ``load_pretrained``: the bert4keras-style front door.

``MODELS`` names each builder class by ``module:Class`` so that a model family is imported
only when asked for. Loading goes through ``keraformer.models.loading`` (detect, read,
rename, assign).
"""

import importlib
import json
import os

from keraformer.models import loading

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


def builder_class(model):
    """The builder class registered under ``model``."""
    if model not in MODELS:
        raise ValueError(f"`model` must be one of {sorted(MODELS)}; received {model!r}")
    module, name = MODELS[model].split(":")
    return getattr(importlib.import_module(module), name)


def read_config(config_path=None, **overrides):
    """A model config dict from a JSON file (or none), updated by ``overrides``."""
    config = {}
    if config_path is not None:
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"`config_path` {config_path!r} does not exist")
        with open(config_path) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError(f"`config_path` {config_path!r} must hold a JSON object; it "
                             f"holds a {type(config).__name__}")
    config.update(overrides)
    return config


def split_options(cls, kwargs):
    """Keyword arguments the builder takes, and the rest (config overrides). An option of
    another builder that this one lacks (e.g. ``attention`` for BERT) is an error, not a
    config key that nothing reads."""
    accepted = cls.option_names()
    foreign = set().union(*(builder_class(m).option_names() for m in MODELS)) - accepted
    misplaced = sorted(k for k in kwargs if k in foreign)
    if misplaced:
        raise ValueError(f"{cls.__name__} does not take the option(s) {misplaced}; its "
                         f"options are {sorted(accepted)}")
    options = {k: v for k, v in kwargs.items() if k in accepted}
    return options, {k: v for k, v in kwargs.items() if k not in accepted}


def make_builder(model, config, application, kwargs):
    """The unbuilt builder of ``model`` for ``config`` updated by the config keys in
    ``kwargs``, with the builder options in ``kwargs``."""
    cls = builder_class(model)
    options, overrides = split_options(cls, kwargs)
    return cls({**config, **overrides}, application=application, **options)


def build_transformer_model(config_path=None, checkpoint_path=None, model="bert",
                            application="encoder", return_keras_model=True, strict=True,
                            **kwargs):
    """Build a model from a config (JSON file and/or keyword config keys), optionally loading
    a checkpoint, as in bert4keras.

    ``model``: ``bert``, ``roberta``, ``roformer``, ``roformer_v2``, ``gau_alpha``, ``t5``,
    ``t5.1.1`` or ``mt5``; ``application``: ``encoder``, ``lm`` or ``unilm``. Builder options
    (``with_pool``, ``with_mlm``, ``keep_tokens``, ``hierarchical_position``, ``max_position``,
    ``recompute``, ``dropout_rate``...) and config keys (``hidden_size``...) are keyword
    arguments. ``checkpoint_path``: any format ``keraformer.models.loading.detect`` knows;
    ``strict=False`` warns about unused checkpoint tensors instead of raising. Returns the
    ``keras.Model``, or the builder (with ``.model``) when ``return_keras_model=False``.
    """
    builder = make_builder(model, read_config(config_path), application, kwargs)
    builder.build()
    if checkpoint_path is not None:
        loading.load_weights(builder, loading.detect(checkpoint_path), strict=strict)
    return builder.model if return_keras_model else builder


def model_of(config):
    """The ``MODELS`` name a Hugging Face ``config.json`` asks for, or ``None``."""
    model_type = config.get("model_type")
    if model_type == "t5":  # T5 1.0 and 1.1 share Hugging Face's model_type
        gated = str(config.get("feed_forward_proj", "relu")).startswith("gated")
        return "t5.1.1" if gated else "t5"
    return HF_MODEL_TYPES.get(model_type, model_type)


def load_pretrained(path, model=None, return_keras_model=True, strict=True, **kwargs):
    """Build and load the model saved in directory ``path``, detecting its format.

    Google TF (``bert_config.json``/``config.json`` + ``*.ckpt.index``; pass ``model`` when it
    is not BERT), Hugging Face (``config.json`` + ``model.safetensors``, sharded safetensors or
    ``tf_model.h5``; the model follows ``model_type``) and keraformer's own ``save``
    folders. ``kwargs`` go to :func:`build_transformer_model`.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`path` {path!r} is not a directory")
    source = loading.detect(path)
    if source.config is None:
        raise ValueError(f"no config (config.json or bert_config.json) beside the "
                         f"{source.kind} weights in {path!r}")
    config = read_config(source.config)
    if source.kind == "keraformer":
        model = config["model"]
        kwargs = {**config["options"], **kwargs}
        config = config["config"]
    else:
        model = model or model_of(config) or "bert"
    application = kwargs.pop("application", "encoder")
    builder = make_builder(model, config, application, kwargs)
    builder.build()
    loading.load_weights(builder, source, strict=strict)
    return builder.model if return_keras_model else builder
