import pytest

import variants
from variants import EncoderSpec, SecondPassSpec


@pytest.mark.parametrize("name", variants.names())
def test_to_dict_from_dict_round_trip(name):
    spec = variants.get(name).spec
    assert EncoderSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("changes, field", [
    (dict(model_dim=500, num_heads=8), "model_dim=500 is not divisible by num_heads=8"),
    (dict(performer_features=0, attention="performer"), "performer_features=0"),
    (dict(conv_only_blocks=18), "conv_only_blocks=18"),
    (dict(reductions=((0, 0),)), "factor 0"),
    (dict(reductions=((20, 2),)), "position 20"),
    (dict(attention="flash"), "attention='flash'"),
    (dict(num_blocks=0), "num_blocks=0"),
    (dict(dropout=0.1), "dropout"),
    (dict(block_order=("ffn", "conv", "ffn")), "block_order"),
])
def test_invalid_specs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        EncoderSpec(**changes)


def test_second_pass_is_validated():
    with pytest.raises(ValueError, match="second_pass.model_dim=100 is not divisible"):
        EncoderSpec(second_pass=SecondPassSpec(model_dim=100, num_heads=8))


def test_unknown_field_in_dict_is_rejected():
    with pytest.raises(ValueError, match="unknown spec fields"):
        EncoderSpec.from_dict({"model_dims": 3})


def test_derived_strides_follow_reductions():
    spec = variants.get("practical").spec
    assert spec.output_stride == 6 and spec.output_frame_ms == 60.0
    assert spec.block_kinds[:4] == ("conv",) * 4 and spec.block_kinds[4:] == ("conformer",) * 13
    assert [spec.block_stride(i) for i in (0, 3, 4, 16)] == [3, 3, 6, 6]
