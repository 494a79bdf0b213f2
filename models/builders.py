"""``build_transformer_model`` and ``load_pretrained``: the bert4keras-style front door.

``MODELS`` names each builder class by ``module:Class`` so that a model family is imported
only when asked for. Loading goes through ``keraformer.models.loading`` (detect, read,
rename, assign).
"""

import difflib
import importlib
import json
import os

from keraformer.checks import check_mapping_keys
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
ALIASES = {"t5.1.0": "t5", "mt5.1.1": "mt5"}  # bert4keras' names
# bert4keras 0.11.5 build_transformer_model keywords that keraformer does not take, and why;
# every other bert4keras keyword is an option or config key of the builders (see the
# migration guide).
REFUSED = {
    "residual_attention_scores": "RealFormer's residual attention scores are not implemented",
    "ignore_invalid_weights": "a checkpoint variable that is missing or does not fit is "
                              "always an error (strict=False only tolerates unused tensors)",
    "autoresize_weights": "weights are never resized to fit; build with the checkpoint's "
                          "config",
    "layers": "builders do not share layers through a dict; reuse builder.model's layers",
    "prefix": "layer names are unique per Keras 3 model, so two builders coexist without a "
              "prefix",
    "custom_position_ids": "positions are always 0..length-1",
    "shared_segment_embeddings": "segment embeddings are never shared with the tokens",
    "attention_caches": "cached decoding is builder.generate(...)",
    "layer_norm_cond": "conditional layer normalisation is not implemented",
    "layer_norm_cond_hidden_size": "conditional layer normalisation is not implemented",
    "layer_norm_cond_hidden_act": "conditional layer normalisation is not implemented",
    "additional_input_layers": "add inputs around builder.model with the Keras functional API",
    "version": "the T5 version is the model name: model='t5', 't5.1.1' or 'mt5'",
}
UNSUPPORTED_MODELS = {
    "albert": "ALBERT", "albert_unshared": "ALBERT", "nezha": "NEZHA", "electra": "ELECTRA",
    "gpt": "GPT", "gpt2": "GPT-2", "gpt2_ml": "GPT2-ML"}
HF_MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "roformer": "roformer", "mt5": "mt5"}


def builder_class(model):
    """The builder class registered under ``model`` (or a bert4keras alias of it)."""
    model = ALIASES.get(model, model)
    if isinstance(model, str) and model.endswith(("_encoder", "_decoder")):
        raise ValueError(f"`model={model!r}` (bert4keras' separate T5 halves) is not a "
                         f"keraformer model: build {model.rsplit('_', 1)[0]!r} with "
                         f"return_keras_model=False and use builder.encoder / "
                         f"builder.decoder")
    if model in UNSUPPORTED_MODELS:
        raise ValueError(f"`model={model!r}`: keraformer has no {UNSUPPORTED_MODELS[model]} "
                         f"builder; supported models are {sorted(MODELS)}")
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
        if os.path.isdir(config_path):
            raise IsADirectoryError(f"`config_path` must be a config JSON file; "
                                    f"{config_path!r} is a directory (pass its config.json "
                                    f"or bert_config.json, or load the whole directory with "
                                    f"load_pretrained)")
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"`config_path` {os.fspath(config_path)!r} is not a JSON config "
                             f"file: {type(error).__name__}: {error}") from None
        if not isinstance(config, dict):
            raise ValueError(f"`config_path` {config_path!r} must hold a JSON object; it "
                             f"holds a {type(config).__name__}")
    config.update(overrides)
    return config


FRONT_DOOR = ("config_path", "checkpoint_path", "model", "application", "return_keras_model",
              "strict", "revision")


def split_options(cls, kwargs):
    """The builder options in ``kwargs`` and the rest (config overrides). A keyword that is
    neither an option of this builder nor a config key it reads is refused by name: an
    option of another builder (``attention`` for BERT) says so, an unknown one
    (``hidden_szie``) gets the closest valid name."""
    refused = sorted(k for k in kwargs if k in REFUSED)
    if refused:
        raise ValueError(f"`{refused[0]}` (a bert4keras option) is not supported: "
                         f"{REFUSED[refused[0]]}")
    accepted, keys = cls.option_names(), set(cls.CONFIG_KEYS)
    others = [builder_class(m) for m in MODELS]
    foreign = set().union(*(other.option_names() for other in others)) - accepted - keys
    misplaced = sorted(k for k in kwargs if k in foreign)
    if misplaced:
        raise ValueError(f"{cls.__name__} does not take the option(s) {misplaced}; its "
                         f"options are {sorted(accepted)}")
    foreign_keys = set().union(*(other.CONFIG_KEYS for other in others)) - keys - accepted
    misplaced = sorted(k for k in kwargs if k in foreign_keys)
    if misplaced:
        raise ValueError(f"{cls.__name__} does not read the config key(s) {misplaced} (other "
                         f"models' keys); the keys it reads are {sorted(keys)}")
    for key in kwargs:
        if key not in accepted and key not in keys:
            valid = sorted(accepted | keys | set(FRONT_DOOR))
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"valid names: {valid}"
            raise ValueError(f"unknown keyword `{key}` for {cls.__name__}; {hint}")
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
    model, a ``keras.Model`` that also generates and saves
    (``keraformer.models.task.TransformerModel``; ``model.builder`` is its builder), or the
    builder (with ``.model``) when ``return_keras_model=False``.

    Example:

        >>> config = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        ...               intermediate_size=16)
        >>> import numpy as np
        >>> from keraformer.models import build_transformer_model
        >>> bert = build_transformer_model(model="bert", **config)        # random weights
        >>> token_ids, segment_ids = np.array([[2, 7, 9, 3, 0]]), np.zeros((1, 5), "int32")
        >>> tuple(bert([token_ids, segment_ids]).shape)                   # last hidden state
        (1, 5, 8)
        >>> lm = build_transformer_model(model="roformer", application="lm", with_mlm=True,
        ...                              **config)
        >>> probs = np.asarray(lm([token_ids, segment_ids]))  # next-token probabilities
        >>> probs.shape, bool(np.allclose(probs.sum(-1), 1, atol=1e-5))
        ((1, 5, 30), True)
        >>> build_transformer_model(model="bert", with_pol=True, **config)
        Traceback (most recent call last):
        ...
        ValueError: unknown keyword `with_pol` for BERT; did you mean `with_pool`?
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


def model_of_names(names, path):
    """The ``MODELS`` name of a Google checkpoint judged from its variable names."""
    names = set(names)
    if "shared/embedding" in names:
        if not any(name.endswith("DenseReluDense/wi_0/kernel") for name in names):
            return "t5"
        return "mt5" if any("/rms_norm/" in name for name in names) else "t5.1.1"
    if any(name.startswith("GAU_alpha/") for name in names):
        return "gau_alpha"
    if "bert/embeddings/word_embeddings" in names:
        if "bert/embeddings/position_embeddings" in names:
            return "bert"  # RoBERTa's Google checkpoints are BERT's too
        if "bert/embeddings/LayerNorm/gamma" in names:
            return "roformer"
        return "roformer_v2"
    raise ValueError(f"cannot tell the model of the Google checkpoint in {path!r} from its "
                     f"variable names (e.g. {sorted(names)[:5]}); pass model= (one of "
                     f"{sorted(MODELS)})")


def load_pretrained(path, model=None, return_keras_model=True, strict=True, revision=None,
                    **kwargs):
    """Build and load the model saved in directory ``path``, detecting its format.

    Google TF (``bert_config.json``/``config.json`` + ``*.ckpt.index``; the model is judged
    from the variable names unless ``model`` is given), Hugging Face (``config.json`` +
    ``model.safetensors``, sharded safetensors or ``tf_model.h5``; the model follows
    ``model_type``) and keraformer's own ``save`` folders. ``path`` may also be
    ``"hf://org/model"`` (at ``revision``), fetched through ``huggingface_hub`` and its cache
    (``HF_HUB_OFFLINE=1``: the cache only; see ``loading.hub_snapshot``). ``kwargs`` go to
    :func:`build_transformer_model`.

    Example:

        >>> config = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        ...               intermediate_size=16)
        >>> import tempfile
        >>> import numpy as np
        >>> from keraformer.models import build_transformer_model, load_pretrained
        >>> builder = build_transformer_model(model="roformer", return_keras_model=False, **config)
        >>> folder = tempfile.mkdtemp()
        >>> builder.save_weights_as_checkpoint(folder + "/bert_model.ckpt")   # Google TF format
        '...bert_model.ckpt'
        >>> import json
        >>> with open(folder + "/bert_config.json", "w") as f:
        ...     json.dump(config, f)
        >>> model = load_pretrained(folder)             # the family is read from the variable names
        >>> ids = np.array([[2, 7, 9, 3]])
        >>> bool(np.allclose(model([ids, 0 * ids]), builder.model([ids, 0 * ids]), atol=1e-6))
        True
    """
    if isinstance(path, str) and path.startswith(loading.HUB_PREFIX):
        path = loading.hub_snapshot(path, revision)
    elif revision is not None:
        raise ValueError(f"`revision` applies to hf:// names only; received revision="
                         f"{revision!r} for the local path {path!r}")
    if os.path.isfile(path):
        raise FileNotFoundError(f"`path` must be a checkpoint directory; {path!r} is a file "
                                f"(pass the directory that holds it and its config: "
                                f"{os.path.dirname(path) or '.'!r})")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`path` {path!r} is not a directory")
    source = loading.detect(path)
    if source.config is None:
        raise ValueError(f"no config (config.json or bert_config.json) beside the "
                         f"{source.kind} weights in {path!r}")
    config, arrays = read_config(source.config), None
    if source.kind == "keraformer":
        check_mapping_keys(config, source.config, model=str, config=dict, options=dict)
        model = config["model"]
        kwargs = {**config["options"], **kwargs}
        config = config["config"]
    elif model is None and model_of(config) is None and source.kind == "google":
        arrays = loading.read_arrays(source)  # read once, to tell the model and to load
        model = model_of_names(arrays, path)
    else:
        model = model or model_of(config) or "bert"
    application = kwargs.pop("application", "encoder")
    builder = make_builder(model, config, application, kwargs)
    builder.build()
    loading.load_weights(builder, source, strict=strict, arrays=arrays)
    return builder.model if return_keras_model else builder
