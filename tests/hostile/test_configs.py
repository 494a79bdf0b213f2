"""Hostile configs and keywords for the builders: every bad value is refused with an error
naming the config key or option, what was expected and what came; a misspelt keyword gets
the closest valid name. No case builds a model that silently ignores or casts the value.
"""

import json
import math

import pytest

from keraformer.models import build_transformer_model, load_pretrained
from tests.references import config_for

ENCODER = dict(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=24, attention_key_size=8)
T5 = dict(vocab_size=30, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)

# (model, bad config keys or options, error type, the name the message must hold)
BAD_ENCODER_VALUES = [
    ("bert", {"vocab_size": 0}, ValueError, "vocab_size"),
    ("bert", {"vocab_size": 2.5}, TypeError, "vocab_size"),
    ("bert", {"vocab_size": "30"}, TypeError, "vocab_size"),
    ("bert", {"vocab_size": True}, TypeError, "vocab_size"),
    ("bert", {"hidden_size": -16}, ValueError, "hidden_size"),
    ("bert", {"hidden_size": 15}, ValueError, "hidden_size"),
    ("roberta", {"num_hidden_layers": 0}, ValueError, "num_hidden_layers"),
    ("roberta", {"num_hidden_layers": 1.0}, TypeError, "num_hidden_layers"),
    ("roformer", {"num_attention_heads": 0}, ValueError, "num_attention_heads"),
    ("roformer_v2", {"intermediate_size": -24}, ValueError, "intermediate_size"),
    ("bert", {"embedding_size": -4}, ValueError, "embedding_size"),
    ("roformer", {"embedding_size": 8.5}, TypeError, "embedding_size"),
    ("bert", {"type_vocab_size": -1}, ValueError, "type_vocab_size"),
    ("roformer", {"type_vocab_size": 1.5}, TypeError, "type_vocab_size"),
    ("bert", {"max_position_embeddings": 0}, ValueError, "max_position_embeddings"),
    ("roberta", {"max_position_embeddings": "512"}, TypeError, "max_position_embeddings"),
    ("bert", {"hidden_dropout_prob": 1.0}, ValueError, "hidden_dropout_prob"),
    ("bert", {"hidden_dropout_prob": -0.1}, ValueError, "hidden_dropout_prob"),
    ("roformer", {"hidden_dropout_prob": "0.1"}, TypeError, "hidden_dropout_prob"),
    ("bert", {"attention_probs_dropout_prob": 1.5}, ValueError,
     "attention_probs_dropout_prob"),
    ("bert", {"layer_norm_eps": 0.0}, ValueError, "layer_norm_eps"),
    ("roformer_v2", {"layer_norm_eps": -1e-12}, ValueError, "layer_norm_eps"),
    ("gau_alpha", {"layer_norm_eps": math.nan}, ValueError, "layer_norm_eps"),
    ("bert", {"layer_norm_eps": "1e-12"}, TypeError, "layer_norm_eps"),
    ("bert", {"initializer_range": 0}, ValueError, "initializer_range"),
    ("roformer", {"initializer_range": math.inf}, ValueError, "initializer_range"),
    ("bert", {"pad_token_id": 30}, ValueError, "pad_token_id"),
    ("roberta", {"pad_token_id": -1}, ValueError, "pad_token_id"),
    ("roformer", {"pad_token_id": 1.0}, TypeError, "pad_token_id"),
    ("bert", {"hidden_act": "gelux"}, ValueError, "hidden_act"),
    ("gau_alpha", {"hidden_act": 3}, ValueError, "hidden_act"),
    ("gau_alpha", {"attention_key_size": 0}, ValueError, "attention_key_size"),
    ("gau_alpha", {"attention_key_size": 7}, ValueError, "attention_key_size"),
    ("roformer", {"hidden_size": 6, "num_attention_heads": 2}, ValueError, "hidden_size"),
    ("roformer", {"rotary_value": True}, ValueError, "rotary_value"),
    # options
    ("bert", {"dropout_rate": 1.0}, ValueError, "dropout_rate"),
    ("roformer", {"dropout_rate": -0.5}, ValueError, "dropout_rate"),
    ("bert", {"with_pool": "tanhh"}, ValueError, "with_pool"),
    ("bert", {"with_mlm": "sofmax"}, ValueError, "with_mlm"),
    ("bert", {"with_nsp": "yes"}, TypeError, "with_nsp"),
    ("roformer_v2", {"with_pool": True}, ValueError, "with_pool"),
    ("gau_alpha", {"with_nsp": True}, ValueError, "with_nsp"),
    ("gau_alpha", {"with_pool": True}, ValueError, "with_pool"),
    ("bert", {"recompute": 1}, TypeError, "recompute"),
    ("roformer", {"entropy_scaling": "no"}, TypeError, "entropy_scaling"),
    ("bert", {"hierarchical_position": "yes"}, TypeError, "hierarchical_position"),
    ("bert", {"keep_tokens": [0, 30]}, ValueError, "keep_tokens"),
    ("bert", {"keep_tokens": [-1, 2]}, ValueError, "keep_tokens"),
    ("roformer", {"keep_tokens": [[1, 2]]}, ValueError, "keep_tokens"),
    ("roformer", {"keep_tokens": []}, ValueError, "keep_tokens"),
    ("bert", {"keep_tokens": [1.5, 2.0]}, ValueError, "keep_tokens"),
    ("bert", {"compound_tokens": 1}, TypeError, "compound_tokens"),
    ("bert", {"compound_tokens": "[1, 2]"}, TypeError, "compound_tokens"),
    ("bert", {"max_position": 0}, ValueError, "max_position"),
    ("roformer", {"rotary_base": 0}, ValueError, "rotary_base"),
    ("roformer", {"rotary_base": "1e4"}, TypeError, "rotary_base"),
    ("roformer", {"attention": "sparse"}, ValueError, "attention"),
    ("roformer", {"attention_options": [8]}, TypeError, "attention_options"),
    ("bert", {"name": 3}, TypeError, "name"),
    ("bert", {"application": "seq2seq"}, ValueError, "application"),
]

BAD_T5_VALUES = [
    ("t5", {"d_model": 0}, ValueError, "d_model"),
    ("t5", {"num_heads": -1}, ValueError, "num_heads"),
    ("t5.1.1", {"d_kv": 2.5}, TypeError, "d_kv"),
    ("mt5", {"d_ff": "8"}, TypeError, "d_ff"),
    ("t5", {"num_decoder_layers": 0}, ValueError, "num_decoder_layers"),
    ("t5", {"relative_attention_num_buckets": 2}, ValueError, "relative_attention_num_buckets"),
    ("t5", {"relative_attention_max_distance": 8}, ValueError,
     "relative_attention_max_distance"),
    ("t5.1.1", {"feed_forward_proj": "gated-gelux"}, ValueError, "feed_forward_proj"),
    ("t5", {"feed_forward_proj": "relu-gated"}, ValueError, "feed_forward_proj"),
    ("t5", {"layer_norm_epsilon": 0}, ValueError, "layer_norm_epsilon"),
    ("mt5", {"dropout_rate": 1.0}, ValueError, "dropout_rate"),
    ("t5", {"initializer_factor": -1.0}, ValueError, "initializer_factor"),
    ("t5", {"pad_token_id": 30}, ValueError, "pad_token_id"),
    ("t5", {"decoder_start_token_id": -1}, ValueError, "decoder_start_token_id"),
    ("t5.1.1", {"eos_token_id": 1000}, ValueError, "eos_token_id"),
    ("mt5", {"eos_token_id": [1000]}, ValueError, "eos_token_id"),
    ("t5", {"eos_token_id": "1"}, TypeError, "eos_token_id"),
    ("t5", {"tie_word_embeddings": "yes"}, TypeError, "tie_word_embeddings"),
    ("t5", {"cross_position_bias": "yes"}, TypeError, "cross_position_bias"),
    ("mt5", {"bert4keras_scaling": 1}, TypeError, "bert4keras_scaling"),
    ("t5", {"with_lm": "sofmax"}, ValueError, "with_lm"),
    ("t5", {"keep_tokens": [0, 30]}, ValueError, "keep_tokens"),
    ("t5", {"sequence_length": 0}, ValueError, "sequence_length"),
    ("t5", {"application": "unilm"}, ValueError, "application"),
]


def config_of(model):
    return T5 if model.startswith(("t5", "mt5")) else config_for(model, ENCODER)


@pytest.mark.parametrize("model, bad, error, name", BAD_ENCODER_VALUES + BAD_T5_VALUES)
def test_bad_value_is_refused_by_name(model, bad, error, name):
    with pytest.raises(error, match=rf"`?{name}`?"):
        build_transformer_model(model=model, **{**config_of(model), **bad})


# (model, keyword, the closest valid name the error must suggest)
MISSPELT = [
    ("bert", "hidden_szie", "hidden_size"),
    ("bert", "with_pol", "with_pool"),
    ("roformer", "with_mlmm", "with_mlm"),
    ("roberta", "num_hidden_layer", "num_hidden_layers"),
    ("gau_alpha", "attention_key_sizes", "attention_key_size"),
    ("roformer_v2", "keep_token", "keep_tokens"),
    ("bert", "hierarchical_positions", "hierarchical_position"),
    ("t5", "d_modle", "d_model"),
    ("mt5", "num_decoder_layer", "num_decoder_layers"),
    ("bert", "retrun_keras_model", "return_keras_model"),
    ("roformer", "attention_option", "attention_options"),
    ("t5.1.1", "dropout_rat", "dropout_rate"),
]


@pytest.mark.parametrize("model, keyword, closest", MISSPELT)
def test_misspelt_keyword_gets_the_closest_name(model, keyword, closest):
    with pytest.raises(ValueError, match=rf"unknown keyword `{keyword}`.*`{closest}`"):
        build_transformer_model(model=model, **config_of(model), **{keyword: 1})


# (model, keyword of another model, the error's wording)
FOREIGN = [
    ("bert", {"attention": "linear"}, r"does not take the option\(s\) \['attention'\]"),
    ("bert", {"rotary_base": 500}, r"does not take the option\(s\) \['rotary_base'\]"),
    ("roformer", {"hierarchical_position": True}, r"\['hierarchical_position'\]"),
    ("t5", {"with_pool": True}, r"does not take the option\(s\) \['with_pool'\]"),
    ("bert", {"d_model": 16}, r"does not read the config key\(s\) \['d_model'\]"),
    ("t5", {"type_vocab_size": 2}, r"does not read the config key\(s\) \['type_vocab_size'\]"),
    ("t5", {"hidden_size": 16}, r"`hidden_size` = 16 and `d_model` = 8"),
]


@pytest.mark.parametrize("model, keyword, message", FOREIGN)
def test_keyword_of_another_model_is_refused(model, keyword, message):
    with pytest.raises(ValueError, match=message):
        build_transformer_model(model=model, **config_of(model), **keyword)


def test_load_pretrained_refuses_misspelt_keyword(tmp_path):
    build_transformer_model(**ENCODER, return_keras_model=False).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="unknown keyword `with_pol`.*`with_pool`"):
        load_pretrained(str(tmp_path), with_pol=True)


def test_config_file_that_is_not_an_object(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="config_path.*JSON object"):
        build_transformer_model(str(path))


def test_config_path_that_is_a_directory_is_named(tmp_path):
    """A checkpoint folder passed as ``config_path`` (load_pretrained takes folders; the
    bert4keras front door takes the JSON file): the error names the argument and the fix."""
    (tmp_path / "config.json").write_text(json.dumps(ENCODER))
    with pytest.raises(IsADirectoryError, match=r"`config_path` must be a config JSON file; "
                                                r"'.*' is a directory"):
        build_transformer_model(str(tmp_path))
    assert build_transformer_model(str(tmp_path / "config.json")).output.shape[-1] == 16
