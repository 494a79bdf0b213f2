"""Training recipes that bert4keras users ran with ``model.fit``: adversarial training.

``adversarial_training(model, embedding_name=None, epsilon=1.0, method="fgm")`` replaces the
compiled model's ``train_step`` with one that trains against perturbations of an embedding
matrix ``E`` (by default the token embedding, ``"Embedding-Token"`` in keraformer's builders):

- ``"fgm"`` (fast gradient method; Miyato, Dai and Goodfellow 2017, "Adversarial Training
  Methods for Semi-Supervised Text Classification", as bert4keras applies it): with ``g`` the
  gradient of the loss with respect to ``E``, the step adds ``r = ε·g/‖g‖`` (Frobenius norm
  over the whole matrix) to ``E``, takes the gradient of the loss there, removes ``r`` and
  lets the optimizer apply that gradient. The reported loss is the loss at ``E + r``.
- ``"gradient_penalty"`` (Su 2020, https://kexue.fm/archives/7234): the step minimises
  ``loss + ½·ε·‖∇_E loss‖²`` (second-order gradients); the reported loss includes the penalty,
  which is also logged as ``gradient_penalty``.
- ``"vat"`` (virtual adversarial training; Miyato et al. 2018): with ``p`` the model's
  predictions at ``E`` (held constant), one power-iteration step from a random direction ``d``
  (``‖d‖ = xi``) gives ``r_adv = ε·g/‖g‖``, ``g = ∇_d KL(p ‖ q(E + d))``; the step minimises
  ``loss + vat_weight·KL(p ‖ q(E + r_adv))``. Batches without targets train on the KL term
  alone (plus the model's own regularisation losses), so unlabelled texts can be mixed in.

``fgm`` and ``vat`` log ``perturbation_norm`` (``‖r‖``: ``ε`` unless the gradient is zero or
not finite, when no perturbation is applied). The step runs on TensorFlow (eager, graph and
``jit_compile``) and JAX (jitted), under mixed precision (the direction is taken from the
scaled loss; the penalty from the gradient of the unscaled loss, since the penalty's own
gradient carries the scale once more and would overflow float16 with it), with
Keras' or keraformer's gradient accumulation (the optimizer accumulates the gradients it
receives) and with LoRA (the frozen embedding is perturbed all the same; only the adapters
and the head train).
"""

import numbers

import keras
import numpy as np
from keras import ops

METHODS = ("fgm", "gradient_penalty", "vat")
DEFAULT_EMBEDDING = "Embedding-Token"


# -- functional core ------------------------------------------------------------------------


def frobenius_norm(x):
    """``‖x‖``: the square root of the sum of squares of every entry, in float32."""
    x = ops.cast(x, "float32")
    return ops.sqrt(ops.sum(ops.square(x)))


def fgm_perturbation(gradient, epsilon):
    """``ε·g/‖g‖`` over the whole matrix ``g`` (float32); zeros when ``‖g‖`` is 0 or not
    finite (an overflowing float16 step), so a bad gradient never moves the embedding."""
    gradient = ops.cast(gradient, "float32")
    norm = frobenius_norm(gradient)
    usable = ops.logical_and(ops.isfinite(norm), ops.greater(norm, 0.0))
    safe = ops.where(usable, gradient, 0.0)
    return safe * (epsilon / ops.where(usable, norm, 1.0))


def gradient_penalty(gradient, epsilon):
    """``½·ε·‖g‖²`` of the embedding gradient ``g`` (float32)."""
    return 0.5 * epsilon * ops.sum(ops.square(ops.cast(gradient, "float32")))


def categorical_kl(p, q, from_logits=False):
    """``mean KL(p ‖ q)`` over every axis but the last (the classes), in float32.

    ``p`` and ``q`` are probabilities (``from_logits=False``, clipped at 1e-7 before the
    logarithm) or logits of the same shape."""
    p, q = ops.cast(p, "float32"), ops.cast(q, "float32")
    if from_logits:
        log_p, log_q = ops.log_softmax(p, axis=-1), ops.log_softmax(q, axis=-1)
        p = ops.exp(log_p)
    else:
        log_p = ops.log(ops.clip(p, 1e-7, 1.0))
        log_q = ops.log(ops.clip(q, 1e-7, 1.0))
    return ops.mean(ops.sum(p * (log_p - log_q), axis=-1))


# -- argument checks ------------------------------------------------------------------------


def check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number > 0; received {value!r} of type "
                        f"{type(value).__name__}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0; received {value!r}")
    return float(value)


def embedding_layers(model):
    """Every ``keras.layers.Embedding`` of ``model``, nested models included (each once)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.Embedding)]


def find_embedding(model, embedding_name):
    """The embedding layer named ``embedding_name``; by default ``"Embedding-Token"`` or, in
    a model without it, the model's only embedding layer."""
    layers = embedding_layers(model)
    names = [layer.name for layer in layers]
    if embedding_name is None:
        chosen = [layer for layer in layers if layer.name == DEFAULT_EMBEDDING]
        if not chosen and len(layers) == 1:
            chosen = layers
        if len(chosen) != 1:
            raise ValueError(f"`embedding_name` is needed: the model has no embedding named "
                             f"{DEFAULT_EMBEDDING!r} and {len(layers)} embedding layers "
                             f"{names} (pass one of them)")
        return chosen[0]
    if not isinstance(embedding_name, str):
        raise TypeError(f"`embedding_name` must be None or a layer name (str); received "
                        f"{type(embedding_name).__name__}")
    chosen = [layer for layer in layers if layer.name == embedding_name]
    if len(chosen) != 1:
        raise ValueError(f"`embedding_name` must name one embedding layer of the model; "
                         f"received {embedding_name!r}, the model's embedding layers are "
                         f"{names}")
    return chosen[0]


def check_compiled(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras model; received {type(model).__name__}")
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError("`model` must be compiled (with an optimizer and a loss) before "
                         "adversarial_training; received an uncompiled model")


def adversarial_training(model, embedding_name=None, epsilon=1.0, method="fgm", xi=10.0,
                         vat_weight=1.0, from_logits=False):
    """Train ``model`` with ``model.fit`` against embedding perturbations (see the module).

    Call it after ``compile``; it returns ``model`` itself, its ``train_step`` replaced
    (calling it again replaces the method; recompiling keeps it). Evaluation and prediction
    are unchanged, and so are the saved model and its weights.

    Args:
        model: a compiled ``keras.Model`` (a builder's model, or one built on it).
        embedding_name: the name of the embedding layer whose matrix is perturbed; None
            picks ``"Embedding-Token"`` (the token embedding of keraformer's builders) or the
            model's only embedding layer.
        epsilon: ``ε > 0``: the norm of the perturbation (``fgm``, ``vat``) or the weight of
            the gradient penalty.
        method: ``"fgm"``, ``"gradient_penalty"`` or ``"vat"``.
        xi: ``vat`` only: the norm of the random probe of the power iteration.
        vat_weight: ``vat`` only: the weight of the KL term.
        from_logits: ``vat`` only: whether the model outputs logits (else probabilities).

    Raises ``TypeError``/``ValueError`` naming the argument for an uncompiled model, an
    unknown method, ``epsilon <= 0`` or a name that is no embedding layer of the model, and
    ``ValueError`` on the torch backend (TensorFlow and JAX are supported).

    Example:

        >>> import numpy as np
        >>> from keraformer.models import build_transformer_model
        >>> from keraformer.training import adversarial_training
        >>> model = build_transformer_model(model="bert", with_pool=True, vocab_size=30,
        ...                                 hidden_size=8, num_hidden_layers=1,
        ...                                 num_attention_heads=2, intermediate_size=16)
        >>> model.compile(optimizer="adam", loss="mse")
        >>> model = adversarial_training(model, epsilon=0.5)      # FGM on "Embedding-Token"
        >>> ids = np.array([[2, 5, 6, 3], [2, 7, 3, 0]])
        >>> history = model.fit([ids, 0 * ids], np.zeros((2, 8)), epochs=1, verbose=0)
        >>> norm = history.history["perturbation_norm"][0]           # ‖r‖ = ε
        >>> sorted(history.history), round(float(norm), 4)
        (['loss', 'perturbation_norm'], 0.5)
        >>> adversarial_training(model, method="pgd")
        Traceback (most recent call last):
        ...
        ValueError: `method` must be one of ('fgm', 'gradient_penalty', 'vat'); received 'pgd'
    """
    check_compiled(model)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; received {method!r}")
    epsilon = check_positive("epsilon", epsilon)
    xi = check_positive("xi", xi)
    vat_weight = check_positive("vat_weight", vat_weight)
    if not isinstance(from_logits, (bool, np.bool_)):
        raise TypeError(f"`from_logits` must be True or False; received {from_logits!r}")
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise ValueError(f"adversarial_training supports the tensorflow and jax backends; "
                         f"the active backend is {backend!r}")
    if method == "vat" and len(model.outputs or []) > 1:
        raise ValueError(f"`method='vat'` needs a model with one output; received "
                         f"{len(model.outputs)} outputs")
    layer = find_embedding(model, embedding_name)
    step = AdversarialStep(model, layer.embeddings, method, epsilon, xi, vat_weight,
                           bool(from_logits))
    model.train_step = step.tensorflow_step if backend == "tensorflow" else step.jax_step
    model.train_function = None
    return model


class AdversarialStep:
    """The replaced ``train_step``: one method per backend, sharing the functional core."""

    def __init__(self, model, embeddings, method, epsilon, xi, vat_weight, from_logits):
        self.model = model
        self.embeddings = embeddings
        self.method = method
        self.epsilon = epsilon
        self.xi = xi
        self.vat_weight = vat_weight
        self.from_logits = from_logits
        self.seed = 1234

    # -- shared pieces ----------------------------------------------------------------------

    def loss_of(self, x, y, y_pred, sample_weight):
        """The compiled loss (with the model's own losses); only those without targets."""
        model = self.model
        if y is None:
            losses = model.losses
            return ops.sum(ops.stack([ops.cast(v, "float32") for v in losses])) \
                if losses else ops.zeros((), "float32")
        return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                  training=True)

    def logs_of(self, x, y, y_pred, sample_weight, extra):
        """Metrics as ``model.fit`` reports them (loss only for a batch without targets)."""
        model = self.model
        if y is None:
            logs = {"loss": model._loss_tracker.result()}
        else:
            logs = dict(model.compute_metrics(x, y, y_pred, sample_weight=sample_weight))
        logs.update(extra)
        return logs

    def batch_size(self, x):
        return ops.shape(next(i for i in keras.tree.flatten(x) if i is not None))[0]

    # -- TensorFlow -------------------------------------------------------------------------

    def tensorflow_step(self, data):
        import tensorflow as tf

        model, E = self.model, self.embeddings
        optimizer = model.optimizer
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        weights = model.trainable_weights
        extra = {}

        def embedding_gradient(tape, loss):
            gradient = tape.gradient(loss, E.value)
            if gradient is None:
                raise ValueError(f"the loss does not depend on the embedding {E.path!r}; "
                                 f"pass the `embedding_name` of an embedding the model uses")
            return tf.convert_to_tensor(gradient)

        if self.method == "fgm":
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(E.value)
                y_pred = model(x, training=True)
                scaled = optimizer.scale_loss(self.loss_of(x, y, y_pred, sample_weight))
            delta = fgm_perturbation(embedding_gradient(tape, scaled), self.epsilon)
            original = tf.identity(E.value)  # (E + r) - r need not round back to E
            E.assign_add(ops.cast(delta, E.dtype))
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = self.loss_of(x, y, y_pred, sample_weight)
                scaled = optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, weights)
            E.assign(original)
            extra["perturbation_norm"] = frobenius_norm(delta)
        elif self.method == "gradient_penalty":
            with tf.GradientTape() as tape:
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    inner.watch(E.value)
                    y_pred = model(x, training=True)
                    loss = self.loss_of(x, y, y_pred, sample_weight)
                penalty = gradient_penalty(embedding_gradient(inner, loss), self.epsilon)
                loss = ops.cast(loss, "float32") + penalty
                scaled = optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, weights)
            extra["gradient_penalty"] = penalty
        else:
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                supervised = self.loss_of(x, y, y_pred, sample_weight)
                clean = tf.stop_gradient(y_pred)
                original = tf.identity(E.value)
                probe = tf.random.stateless_normal(
                    E.shape, seed=tf.stack([tf.constant(self.seed, tf.int64),
                                            tf.cast(optimizer.iterations, tf.int64)]))
                probe = fgm_perturbation(probe, self.xi)
                E.assign_add(ops.cast(probe, E.dtype))
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    inner.watch(E.value)
                    divergence = optimizer.scale_loss(categorical_kl(
                        clean, model(x, training=True), self.from_logits))
                gradient = embedding_gradient(inner, divergence)
                E.assign(original)
                delta = tf.stop_gradient(fgm_perturbation(gradient, self.epsilon))
                E.assign_add(ops.cast(delta, E.dtype))
                adversarial = categorical_kl(clean, model(x, training=True), self.from_logits)
                loss = ops.cast(supervised, "float32") + self.vat_weight * adversarial
                scaled = optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, weights)
            E.assign(original)
            extra["perturbation_norm"] = frobenius_norm(delta)
        model._loss_tracker.update_state(loss, sample_weight=self.batch_size(x))
        optimizer.apply_gradients(zip(gradients, weights))
        return self.logs_of(x, y, y_pred, sample_weight, extra)

    # -- JAX --------------------------------------------------------------------------------

    def jax_step(self, state, data):
        import jax

        model, E = self.model, self.embeddings
        optimizer = model.optimizer
        trainable, non_trainable, optimizer_values, metric_values = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        trainable_ids = [id(v) for v in model.trainable_variables]
        frozen_ids = [id(v) for v in model.non_trainable_variables]
        in_trainable = id(E) in trainable_ids
        index = (trainable_ids if in_trainable else frozen_ids).index(id(E))
        original = (trainable if in_trainable else non_trainable)[index]

        def shifted(trainable, non_trainable, delta):
            """The variable values with ``E + delta`` in place of ``E``."""
            values = list(trainable if in_trainable else non_trainable)
            values[index] = values[index] + delta.astype(values[index].dtype)
            return (values, list(non_trainable)) if in_trainable \
                else (list(trainable), values)

        def forward(trainable, non_trainable, delta):
            """``(y_pred, non_trainable after the call, the model's own losses)`` at
            ``E + delta``; ``E`` itself comes back unshifted."""
            trainable, non_trainable = shifted(trainable, non_trainable, delta)
            y_pred, non_trainable, losses = model.stateless_call(
                trainable, non_trainable, x, return_losses=True, training=True)
            non_trainable = list(non_trainable)
            if not in_trainable:
                non_trainable[index] = original
            return y_pred, non_trainable, losses

        def scaled(loss):
            mapping = list(zip(optimizer.variables, optimizer_values))
            with keras.StatelessScope(state_mapping=mapping):
                return optimizer.scale_loss(loss)

        def loss_at(trainable, non_trainable, delta):
            """``(scaled loss, (loss, y_pred, non_trainable, metric values))`` at
            ``E + delta``: the compiled loss, or the model's own losses without targets."""
            if y is None:
                y_pred, non_trainable, losses = forward(trainable, non_trainable, delta)
                loss = sum((ops.cast(v, "float32") for v in losses), ops.zeros(()))
                return scaled(loss), (loss, y_pred, non_trainable, metric_values)
            shifted_trainable, shifted_frozen = shifted(trainable, non_trainable, delta)
            scaled_loss, (loss, y_pred, non_trainable, metrics) = \
                model.compute_loss_and_updates(
                    shifted_trainable, shifted_frozen, metric_values, x, y, sample_weight,
                    training=True, optimizer_variables=optimizer_values)
            non_trainable = list(non_trainable)
            if not in_trainable:
                non_trainable[index] = original
            return scaled_loss, (loss, y_pred, non_trainable, metrics)

        zero = jax.numpy.zeros(original.shape, "float32")
        extra = {}
        if self.method == "fgm":
            gradient = jax.grad(lambda d: loss_at(trainable, non_trainable, d)[0])(zero)
            delta = fgm_perturbation(gradient, self.epsilon)
            (_, aux), gradients = jax.value_and_grad(
                lambda t: loss_at(t, non_trainable, delta), has_aux=True)(trainable)
            extra["perturbation_norm"] = frobenius_norm(delta)
        elif self.method == "gradient_penalty":
            def penalised(trainable):
                def unscaled(d):
                    aux = loss_at(trainable, non_trainable, d)[1]
                    return aux[0], aux
                gradient, aux = jax.grad(unscaled, has_aux=True)(zero)
                penalty = gradient_penalty(gradient, self.epsilon)
                loss = ops.cast(aux[0], "float32") + penalty
                return scaled(loss), ((loss,) + tuple(aux[1:]), penalty)

            (_, (aux, penalty)), gradients = jax.value_and_grad(
                penalised, has_aux=True)(trainable)
            extra["gradient_penalty"] = penalty
        else:
            key = jax.random.fold_in(jax.random.PRNGKey(self.seed),
                                     optimizer_values[self.iterations_index()])
            probe = fgm_perturbation(jax.random.normal(key, original.shape, "float32"),
                                     self.xi)

            def objective(trainable):
                loss, (supervised, y_pred, frozen, metrics) = loss_at(
                    trainable, non_trainable, zero)
                clean = jax.lax.stop_gradient(y_pred)

                def divergence(d):
                    q = forward(trainable, non_trainable, d)[0]
                    return scaled(categorical_kl(clean, q, self.from_logits))
                delta = jax.lax.stop_gradient(fgm_perturbation(jax.grad(divergence)(probe),
                                                               self.epsilon))
                q = forward(trainable, non_trainable, delta)[0]
                loss = ops.cast(supervised, "float32") + self.vat_weight * categorical_kl(
                    clean, q, self.from_logits)
                return scaled(loss), ((loss, y_pred, frozen, metrics), delta)

            (_, (aux, delta)), gradients = jax.value_and_grad(objective, has_aux=True)(
                trainable)
            extra["perturbation_norm"] = frobenius_norm(delta)
        loss, y_pred, non_trainable, metric_values = aux
        trainable, optimizer_values = optimizer.stateless_apply(
            optimizer_values, gradients, trainable)
        mapping = list(zip(model.metrics_variables, metric_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            model._loss_tracker.update_state(loss, sample_weight=self.batch_size(x))
            logs = self.logs_of(x, y, y_pred, sample_weight, extra)
        metric_values = [scope.get_current_value(v) if scope.get_current_value(v) is not None
                         else v.value for v in model.metrics_variables]
        return logs, (trainable, non_trainable, optimizer_values, metric_values)

    def iterations_index(self):
        optimizer = self.model.optimizer
        return [id(v) for v in optimizer.variables].index(id(optimizer.iterations))
