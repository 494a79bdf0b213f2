"""The ``keras.Model`` that the builders return: a functional model that also generates and
saves.

``build_transformer_model`` and ``load_pretrained`` return a :class:`TransformerModel` (as
KerasHub's tasks are ``keras.Model`` subclasses): ``fit``, ``predict``, ``save`` and a
``.keras`` round trip in safe mode as any functional model, plus what the builder behind it
can do, ``generate`` (T5 and every BERT-family ``lm``/``unilm`` model),
``save_pretrained``, ``save_weights_as_checkpoint`` and, for T5, ``encoder``/``decoder``.
Its config is the builder's description (model name, config, options), so a ``.keras`` file
rebuilds the same architecture from it and loads the weights; no code is read from the file.
"""

import keras

from keraformer.models.base import IdInputModel, jsonable


@keras.saving.register_keras_serializable(package="keraformer")
class TransformerModel(IdInputModel):
    """A builder's functional model with the builder's ``generate`` and checkpoint writers.

    ``TransformerModel(builder, inputs, outputs, name=None)``: ``builder`` is the
    ``keraformer.models`` builder whose layers make the graph from ``inputs`` to ``outputs``.
    ``model.builder`` is that builder (``return_keras_model=False`` returns it). Its id
    inputs are checked where they enter, as :class:`keraformer.models.base.IdInputModel`'s.

    Example:

        >>> import os, tempfile
        >>> import numpy as np
        >>> from keraformer.models import build_transformer_model
        >>> model = build_transformer_model(model="roformer", application="lm", with_mlm=True,
        ...                                 vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                                 num_attention_heads=2, intermediate_size=16)
        >>> type(model).__name__, type(model.builder).__name__
        ('TransformerModel', 'RoFormer')
        >>> ids = model.generate(np.array([[2, 7, 9]]), max_length=4)   # builder.generate
        >>> ids.shape, ids.dtype
        ((1, 4), dtype('int32'))
        >>> folder = model.save_pretrained(os.path.join(tempfile.mkdtemp(), "hf"))
        >>> sorted(os.listdir(folder))                                       # transformers loads it
        ['config.json', 'model.safetensors']
    """

    def __init__(self, builder, inputs, outputs, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.builder = builder

    def generate(self, token_ids, *args, **kwargs):
        """The builder's ``generate`` (T5: ``generate(token_ids, max_length=32,
        method="greedy", ...)``; BERT family ``lm``/``unilm``: ``generate(token_ids,
        segment_ids=None, max_length=32, ...)``; see ``keraformer.models.decoding``)."""
        generate = getattr(self.builder, "generate", None)
        if generate is None:
            raise ValueError(f"{type(self.builder).__name__} models cannot generate")
        return generate(token_ids, *args, **kwargs)

    def save_pretrained(self, directory):
        """Write a Hugging Face directory that ``transformers`` loads (see the builder's
        ``save_pretrained``); returns it."""
        return self.builder.save_pretrained(directory)

    def save_weights_as_checkpoint(self, path):
        """Write the weights as a Google-format TF checkpoint at prefix ``path``."""
        return self.builder.save_weights_as_checkpoint(path)

    @property
    def encoder(self):
        """T5's encoder model (``token_ids`` -> states)."""
        return self.builder_part("encoder")

    @property
    def decoder(self):
        """T5's decoder model (``[encoder_output, decoder_token_ids(, encoder_token_ids)]``
        -> probabilities)."""
        return self.builder_part("decoder")

    def builder_part(self, name):
        part = getattr(self.builder, name, None)
        if not isinstance(part, keras.Model):
            raise AttributeError(f"a {type(self.builder).__name__} model has no `{name}` "
                                 f"(T5 models have encoder and decoder)")
        return part

    def get_config(self):
        builder = self.builder
        return {"model": builder.model_name, "config": jsonable(builder.config),
                "options": {k: jsonable(v) for k, v in builder.options.items()},
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        from keraformer.models.builders import make_builder
        options = dict(config["options"])
        application = options.pop("application", "encoder")
        builder = make_builder(config["model"], config["config"], application, options)
        return builder.build()
