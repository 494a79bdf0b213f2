"""What every model builder shares: its config, options, checkpoint names and saving.

A builder subclass builds ``self.model`` in ``build()`` and states, in one readable dict
returned by ``variable_mapping()``, which checkpoint variable (Google TF naming) feeds which
Keras variable. ``rename`` turns a checkpoint in another naming (Hugging Face PyTorch or
``tf_model.h5``) into those names, so every format loads through the same mapping and the
same checks (see ``keraformer.models.loading``, the one loading path).
"""

import json
import os

import keras
import numpy as np

from keraformer import checkpoints
from keraformer.checks import check_model_inputs, check_save_path


class Transformer:
    """Base of the model builders. Subclasses define ``build``, ``variable_mapping`` and
    ``rename``.

    ``config`` holds the checkpoint's hyper-parameters (BERT's ``bert_config.json`` keys or a
    Hugging Face ``config.json``). ``options`` are the builder's keyword options
    (``with_pool``...), recorded so that ``save`` can rebuild the same model.
    ``model_name`` is the builder's name in ``keraformer.models.MODELS``.
    """

    model_name = None
    APPLICATIONS = ("encoder",)

    def __init__(self, config, application="encoder", **options):
        if application not in self.APPLICATIONS:
            raise ValueError(f"`application` must be one of {self.APPLICATIONS} for "
                             f"{type(self).__name__}; received {application!r}")
        if not isinstance(config, dict):
            raise TypeError(f"`config` must be a dict of config keys; received "
                            f"{type(config).__name__}")
        self.config = dict(config)
        self.application = application
        self.options = {"application": application, **options}
        self.model = None
        self.carried_heads = {}  # set by loading: checkpoint heads the model does not use

    def require(self, *keys):
        """Config values for ``keys``; a ``ValueError`` names any that are missing."""
        missing = [key for key in keys if key not in self.config]
        if missing:
            raise ValueError(f"model config is missing {missing}; received keys "
                             f"{sorted(self.config)}")
        return [self.config[key] for key in keys]

    def build(self):
        raise NotImplementedError

    # -- checkpoint names -----------------------------------------------------------------
    def variable_mapping(self):
        """``{checkpoint_name: keras.Variable}`` for every weight of the model."""
        raise NotImplementedError

    def rename(self, arrays, naming):
        """``{name: array}`` of a checkpoint in ``naming`` (``"google"``, ``"pytorch"``: a
        Hugging Face state dict, Linear weights ``(out, in)``; ``"tf_h5"``: a Hugging Face
        ``tf_model.h5``) as ``{checkpoint_name: array}`` in the names of
        ``variable_mapping``."""
        if naming == "google":
            return dict(arrays)
        raise ValueError(f"{type(self).__name__} cannot read {naming!r} checkpoints")

    def unused_allowed(self, name):
        """Whether checkpoint tensor ``name`` may go unused (a head the user did not ask
        for, a buffer, optimizer state); see ``loading.UNUSED_ALLOWED``."""
        return False

    def check_checkpoint(self, arrays):
        """Raise a ``ValueError`` with a hint when ``arrays`` belong to another model (before
        the generic missing-variable error); subclasses override."""

    def to_keras(self, name, array):
        """Turn a checkpoint array into the layout of its Keras variable (default: as is)."""
        return array

    def to_checkpoint(self, name, array):
        """Inverse of :meth:`to_keras`, used when writing a checkpoint."""
        return array

    def load_weights_from_checkpoint(self, path, strict=True):
        """Load a checkpoint (any format ``keraformer.models.loading.detect`` knows) into
        ``self.model``; ``strict=False`` turns unused checkpoint tensors into a warning."""
        from keraformer.models import loading
        loading.load_weights(self, loading.detect(path), strict=strict)

    # -- writing --------------------------------------------------------------------------
    def checkpoint_arrays(self):
        """``{checkpoint_name: array}`` of the current weights, in checkpoint layout, plus the
        heads of the loaded checkpoint that the model was built without (``carried_heads``,
        set by ``loading.assign``), so that a load-then-save round trip keeps them."""
        weights = {name: self.to_checkpoint(name, keras.ops.convert_to_numpy(variable))
                   for name, variable in self.variable_mapping().items()}
        return {**self.carried_heads, **weights}

    def save(self, directory):
        """Save config, options and weights to ``directory`` (reload with ``load_pretrained``),
        atomically: see ``checkpoints.write_keraformer_directory``."""
        if self.model is None:
            raise ValueError(f"{type(self).__name__}.save: the model is not built; call "
                             f"build() first")
        directory = check_save_path(directory)
        os.makedirs(directory, exist_ok=True)
        options = {k: jsonable(v) for k, v in self.options.items()}
        checkpoints.write_keraformer_directory(
            directory, {"model": self.model_name, "config": self.config, "options": options},
            self.model.save_weights)

    def save_weights_as_checkpoint(self, path):
        """Write the weights as a Google-format TF checkpoint at prefix ``path``."""
        return checkpoints.write_tf_checkpoint(self.checkpoint_arrays(), path)


def jsonable(value):
    """``value`` with NumPy arrays and scalars (e.g. in ``keep_tokens``) as JSON types."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def kept_rows(keep_tokens, vocab_size, name="keep_tokens"):
    """``keep_tokens`` as a 1-D int array of rows of a ``vocab_size`` table, or
    ``None``; a ``ValueError`` names ``name`` unless every id lies in the table."""
    if keep_tokens is None:
        return None
    rows = np.asarray(keep_tokens)
    if rows.ndim != 1 or rows.size == 0 or rows.dtype.kind not in "iu":
        raise ValueError(f"`{name}` must be a non-empty 1-D list of integer token ids; "
                         f"received {rows.size} values of dtype {rows.dtype} in shape "
                         f"{rows.shape}")
    if rows.min() < 0 or rows.max() >= vocab_size:
        raise ValueError(f"`{name}` must lie in [0, {vocab_size}) (the checkpoint's "
                         f"vocab_size); received ids from {rows.min()} to {rows.max()}")
    return rows


class Vocabulary:
    """bert4keras' ``keep_tokens`` and ``compound_tokens`` over a checkpoint's vocabulary of
    ``vocab_size`` rows: the model's rows are the kept rows (all if ``None``) then one per
    compound token, the (weighted) mean of the kept rows it lists. ``compound_tokens``:
    lists of ids, or ``(ids, weights)`` pairs; ids index the kept rows."""

    def __init__(self, vocab_size, keep_tokens=None, compound_tokens=None):
        self.keep_tokens = kept_rows(keep_tokens, vocab_size)
        kept = vocab_size if self.keep_tokens is None else len(self.keep_tokens)
        self.compounds = []
        if compound_tokens is not None and (isinstance(compound_tokens, (str, bytes, dict))
                                            or not isinstance(compound_tokens,
                                                              (list, tuple, np.ndarray))):
            raise TypeError(f"`compound_tokens` must be None or a list of compound tokens "
                            f"(lists of ids or (ids, weights) pairs); received "
                            f"{type(compound_tokens).__name__} {compound_tokens!r}")
        for item in compound_tokens if compound_tokens is not None else ():
            if (isinstance(item, (list, tuple)) and len(item) == 2
                    and isinstance(item[0], (list, tuple, np.ndarray))):
                ids, weights = item  # (ids, weights); a list after a JSON round trip
            elif isinstance(item, (list, np.ndarray)):  # as bert4keras: a list is ids alone
                ids, weights = item, None
            else:
                raise ValueError(f"`compound_tokens` entries must be lists of ids or (ids, "
                                 f"weights) pairs; received {item!r}")
            ids = kept_rows(ids, kept, "compound_tokens")
            weights = np.ones(len(ids)) if weights is None else np.asarray(weights, float)
            if weights.shape != ids.shape or not np.all(weights >= 0) or weights.sum() <= 0:
                raise ValueError(f"`compound_tokens` weights must be one non-negative number "
                                 f"per id, not all zero; received {item!r}")
            self.compounds.append((ids, weights))
        if compound_tokens is not None and not self.compounds:
            raise ValueError("`compound_tokens` must list at least one compound token; "
                             "received an empty list")
        self.size = kept + len(self.compounds)

    def rows(self, array):
        """The model's rows of a checkpoint table ``array`` (``(vocab_size, ...)``)."""
        if self.keep_tokens is not None:
            array = array[self.keep_tokens]
        if self.compounds:
            extra = [np.average(array[ids], axis=0, weights=w) for ids, w in self.compounds]
            array = np.concatenate([array, np.asarray(extra, array.dtype)], axis=0)
        return array


# argument names of the builders' id inputs, by Input layer name, for error messages
ID_INPUT_NAMES = {"Input-Token": "token_ids", "Input-Segment": "segment_ids",
                  "Encoder-Input-Token": "encoder_token_ids",
                  "Decoder-Input-Token": "decoder_token_ids"}


@keras.saving.register_keras_serializable(package="keraformer")
class IdInputModel(keras.Model):
    """A functional ``keras.Model`` whose inputs are id arrays, checked where they enter.

    Keras casts every input to its ``Input``'s int32 before any layer sees it, so a
    fractional id (``7.9``) would become ``7`` and a segment batch of 1 would broadcast
    against a token batch of 2. Here eager calls and ``predict``/``fit``/``evaluate`` on
    arrays refuse, by argument name (``token_ids``, ``segment_ids``...), ragged lists,
    strings, a batch or length of 0, fractional ids, batch sizes that differ, token and
    segment ids of different lengths and inputs longer than the trained positions; inside
    traced code (TF graphs, XLA, JAX ``jit``) fractional ids become ``-1``, which the
    embedding refuses (see ``keraformer.checks.check_model_inputs``). Built like any
    functional model, ``IdInputModel(inputs, outputs, name=...)``; its checks come from the
    graph (Input names, position tables), so it round-trips through ``.keras`` as it is.
    """

    def id_input_names(self):
        return [ID_INPUT_NAMES.get(x.name, x.name) for x in self.inputs]

    def position_limit(self):
        """The most positions a ``PositionEmbedding`` in the graph can give, or ``None``."""
        from keraformer.positions import PositionEmbedding

        limits = [layer.input_dim ** (2 if layer.hierarchical else 1)
                  for layer in self.layers if isinstance(layer, PositionEmbedding)]
        return min(limits) if limits else None

    def checked(self, inputs):
        limit = self.position_limit()
        lengths = None if limit is None else {"token_ids": limit, "segment_ids": limit}
        return check_model_inputs(inputs, self.id_input_names(),
                                  ("token_ids", "segment_ids"), lengths)

    def checked_data(self, x):
        """``x`` of ``fit``/``predict``/``evaluate`` checked when it holds arrays (a
        ``tf.data.Dataset`` or generator passes as it is)."""
        if isinstance(x, (list, tuple, np.ndarray)) or (
                hasattr(x, "shape") and hasattr(x, "dtype")):
            return self.checked(x)
        return x

    def __call__(self, *args, **kwargs):
        if args:
            args = (self.checked(args[0]),) + args[1:]
        elif "inputs" in kwargs:
            kwargs["inputs"] = self.checked(kwargs["inputs"])
        return super().__call__(*args, **kwargs)

    def call(self, inputs, training=None, mask=None, **kwargs):
        return super().call(self.checked(inputs), training=training, mask=mask, **kwargs)

    def predict(self, x, *args, **kwargs):
        return super().predict(self.checked_data(x), *args, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        return super().fit(self.checked_data(x), *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        return super().evaluate(self.checked_data(x), *args, **kwargs)
