"""Per-layer attention plans of a stack: which layers see a window, rotary positions and the
``log n`` scale.

``"hwfa"`` (hybrid window-full attention; Su 2023, "Transformer upgrade road 9/10"): every
layer but the last attends within a window with RoPE; the last attends to every key with no
position encoding and entropy-invariant (``log n``) scaling. The windowed layers see only
distances they were trained on whatever the input length; the last layer reads the whole
context, which has no positions to extrapolate and whose softmax keeps its sharpness through
the ``log n`` factor. ``"uniform"``: every layer as the builder's own options say.
"""

from keraformer.checks import check_positive_ints

PLANS = ("uniform", "hwfa")


def layer_plan(plan, layers, window=None, rotary=False, entropy_scaling=False):
    """One dict per layer with the keys ``window`` (``None``: full attention), ``rotary``
    (whether RoPE rotates the layer's queries and keys) and ``entropy_scaling``.

    ``plan="uniform"`` repeats ``window``, ``rotary`` and ``entropy_scaling`` in every layer;
    ``plan="hwfa"`` needs ``window`` and at least two layers: layers ``0..layers−2`` get
    ``{window, rotary=True, entropy_scaling=False}``, the last ``{None, False, True}``.
    """
    if plan not in PLANS:
        raise ValueError(f"`layer_plan` must be one of {PLANS}; received {plan!r}")
    check_positive_ints(layers=layers)
    if plan == "uniform":
        return [{"window": window, "rotary": rotary, "entropy_scaling": entropy_scaling}
                for _ in range(layers)]
    if window is None:
        raise ValueError("`layer_plan='hwfa'` needs the window of its local layers: pass "
                         "attention_window=; received attention_window=None")
    check_positive_ints(attention_window=window)
    if layers < 2:
        raise ValueError(f"`layer_plan='hwfa'` needs at least 2 layers (windowed ones and a "
                         f"full last one); received {layers}")
    local = {"window": window, "rotary": True, "entropy_scaling": False}
    return [dict(local) for _ in range(layers - 1)] + [
        {"window": None, "rotary": False, "entropy_scaling": True}]


# Builder options of a block stack for long inputs and deep stacks, and their defaults.
STACK_OPTIONS = {"attention_window": None, "rerope_window": None, "rerope_leak": None,
                 "layer_plan": "uniform", "deepnorm": False, "random_positions": None}


class StackOptions:
    """The builder options that shape every block of a stack: local attention
    (``attention_window``), ReRoPE (``rerope_window``, ``rerope_leak``), the layer plan
    (``layer_plan="hwfa"``), DeepNorm (``deepnorm=True``) and training-time random positions
    (``random_positions=N``).

    ``check`` refuses, by the option's name, what the stack cannot honour: ReRoPE and
    ``"hwfa"`` need rotary positions; local attention, ReRoPE, ``"hwfa"`` and, with rotary
    positions, random positions need softmax attention (``MultiHeadAttention``).
    """

    def __init__(self, attention_window=None, rerope_window=None, rerope_leak=None,
                 layer_plan="uniform", deepnorm=False, random_positions=None):
        if attention_window is not None:
            check_positive_ints(attention_window=attention_window)
        if rerope_window is not None or rerope_leak is not None:
            from keraformer.positions.rerope import check_rerope_options
            if rerope_window is None:
                raise ValueError(f"`rerope_leak={rerope_leak!r}` needs `rerope_window`; "
                                 f"received rerope_window=None")
            check_rerope_options(rerope_window, rerope_leak)
        if layer_plan not in PLANS:
            raise ValueError(f"`layer_plan` must be one of {PLANS}; received {layer_plan!r}")
        if not isinstance(deepnorm, bool):
            raise TypeError(f"`deepnorm` must be True or False; received {deepnorm!r}")
        if random_positions is not None:
            check_positive_ints(random_positions=random_positions)
        self.attention_window, self.rerope_window = attention_window, rerope_window
        self.rerope_leak, self.layer_plan = rerope_leak, layer_plan
        self.deepnorm, self.random_positions = deepnorm, random_positions

    def given(self):
        """The options that differ from their defaults, by name."""
        return {name: getattr(self, name) for name, default in STACK_OPTIONS.items()
                if getattr(self, name) != default}

    def check(self, owner, attention, rotary):
        """Refuse options that a stack of ``attention`` layers with (or without) ``rotary``
        positions cannot honour; ``owner`` names the builder in the message."""
        given = self.given()
        for name in ("rerope_window", "rerope_leak", "layer_plan"):
            if name in given and not rotary:
                raise ValueError(f"{owner} does not support {name}={given[name]!r}: it needs "
                                 f"rotary positions (RoFormer families), and {owner} has none")
        softmax_only = ("attention_window", "rerope_window", "rerope_leak", "layer_plan") + (
            ("random_positions",) if rotary else ())  # rotary positions reach MHA alone
        for name in softmax_only:
            if name in given and attention != "softmax":
                raise ValueError(f"attention={attention!r} does not support {name}="
                                 f"{given[name]!r}: local attention and ReRoPE are options "
                                 f"of softmax attention (attention='softmax')")

    def plan(self, layers, rotary, entropy_scaling):
        """:func:`layer_plan` of this stack."""
        return layer_plan(self.layer_plan, layers, self.attention_window, rotary,
                          entropy_scaling)

    def attention_options(self, layer):
        """``window``/``rerope_*`` constructor arguments of one planned layer's attention."""
        options = {} if layer["window"] is None else {"window": layer["window"]}
        if self.rerope_window is not None and layer["rotary"]:
            options["rerope_window"] = self.rerope_window
            if self.rerope_leak is not None:
                options["rerope_leak"] = self.rerope_leak
        return options

    def norm_options(self, encoder_layers=0, decoder_layers=0, stack=None):
        """``{"norm": "deepnorm", "deepnorm": (α, β)}`` of the block (``stack``: "encoder"
        or "decoder"; default the only one), or ``{}`` without DeepNorm."""
        if not self.deepnorm:
            return {}
        from keraformer.normalization import deepnorm_constants
        constants = deepnorm_constants(encoder_layers, decoder_layers)
        return {"norm": "deepnorm",
                "deepnorm": constants[stack] if stack else next(iter(constants.values()))}
