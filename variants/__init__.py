"""Encoder variants: one framework-neutral spec per variant, built in JAX/Flax or PyTorch."""

from variants.spec import EncoderSpec, SecondPassSpec
from variants.registry import Variant, UnknownVariantError, register, names, get, select
from variants import paper  # noqa: F401  (registers the paper's variants)
from variants.build import build

__all__ = [
    "EncoderSpec", "SecondPassSpec", "Variant", "UnknownVariantError",
    "register", "names", "get", "select", "build", "resolve_spec",
]


def resolve_spec(name_or_spec: "str | EncoderSpec") -> EncoderSpec:
    return name_or_spec if isinstance(name_or_spec, EncoderSpec) else get(name_or_spec).spec
