import warnings

import pytest

import variants
from variants import registry

LADDER = ["baseline", "conv_lower", "conv_lower_downsized", "practical", "practical_cascade"]


def test_names_start_with_the_ladder_and_hold_every_paper_variant():
    names = variants.names()
    assert names[: len(LADDER)] == LADDER
    assert {"baseline", "conv_lower", "downsized", "performer", "practical", "cascade", "practical_cascade"} <= set(names)


def test_unknown_variant_lists_valid_names():
    with pytest.raises(variants.UnknownVariantError) as err:
        variants.get("nope")
    message = str(err.value)
    assert "nope" in message and all(n in message for n in variants.names())
    assert isinstance(err.value, (KeyError, ValueError))


def test_select_all_glob_and_lists_keep_ladder_order():
    assert variants.select("all") == variants.names()
    assert variants.select("perf*") == ["performer"]
    assert variants.select("practical*") == ["practical", "practical_cascade"]
    assert variants.select("performer,baseline") == ["baseline", "performer"]
    with pytest.raises(variants.UnknownVariantError, match="no variant matches 'zzz\\*'"):
        variants.select("zzz*")
    with pytest.raises(variants.UnknownVariantError, match="unknown variant 'nope'"):
        variants.select("baseline,nope")


def test_register_adds_a_variant_and_warns_on_duplicate(monkeypatch):
    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))

    @variants.register("tiny test variant")
    def my_variant():
        return variants.EncoderSpec(num_blocks=2)

    assert variants.names()[-1] == "my_variant"
    assert variants.get("my_variant").spec.num_blocks == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        variants.register("again")(my_variant)
    assert any("registered twice" in str(w.message) for w in caught)


def test_resolve_spec_takes_a_name_or_a_spec_and_names_an_unknown_one():
    spec = variants.get("practical").spec
    assert variants.resolve_spec("practical") == spec
    custom = spec.replace(left_context=7)
    assert variants.resolve_spec(custom) is custom
    with pytest.raises(ValueError, match="unknown variant 'nope'; valid variants: baseline"):
        variants.resolve_spec("nope")


def test_a_variant_name_can_carry_spec_overrides():
    import variants
    from variants.registry import overridden_name, split_overrides

    variant = variants.get("baseline[left_context=128, num_blocks=12]")
    assert variant.spec == variants.get("baseline").spec.replace(left_context=128, num_blocks=12)
    assert variant.name == "baseline[num_blocks=12,left_context=128]"  # one name per spec: fields in spec order
    assert split_overrides(variant.name) == ("baseline", {"num_blocks": "12", "left_context": "128"})
    assert overridden_name("baseline", {"left_context": "128", "num_blocks": "12"}) == variant.name
    assert variants.select("practical,baseline[left_context=128,num_blocks=12]") == ["practical", variant.name]


@pytest.mark.parametrize("name, says", [
    ("baseline[left_contxt=1]", "left_contxt: is not a spec field"),
    ("baseline[left_context=abc]", "left_context=abc: expected an integer"),
    ("baseline[num_heads=7]", "not divisible by num_heads=7"),
    ("baseline[reductions=1]", "reductions: cannot be set from the command line"),
    ("nope[left_context=1]", "unknown variant 'nope'"),
    ("baseline[left_context]", "expected field=value"),
])
def test_a_bad_override_is_one_line_naming_the_field(name, says):
    import variants

    with pytest.raises(ValueError) as info:
        variants.get(name)
    assert says in str(info.value) and "\n" not in str(info.value)
