"""Encoder variants: one framework-neutral spec per variant, built in JAX/Flax or PyTorch."""

from variants.spec import EncoderSpec, SecondPassSpec
from variants.registry import (Variant, UnknownVariantError, PluginError, register, names, get, select,
                               resolve_spec, load_plugins)
from variants import paper  # noqa: F401  (registers the paper's variants)
from variants.build import build

__all__ = [
    "EncoderSpec", "SecondPassSpec", "Variant", "UnknownVariantError",
    "register", "names", "get", "select", "build", "resolve_spec", "load_plugins", "PluginError",
]
