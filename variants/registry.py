"""Named encoder variants, timm-style: `@register` adds a spec builder under its function name."""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from typing import Callable

from variants.spec import EncoderSpec


@dataclass(frozen=True)
class Variant:
    name: str
    description: str  # one line, shown by `bench list`
    make_spec: Callable[[], EncoderSpec]

    @property
    def spec(self) -> EncoderSpec:
        return self.make_spec()


_VARIANTS: dict[str, Variant] = {}  # insertion order is the ladder order


class UnknownVariantError(KeyError, ValueError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register(description: str) -> Callable[[Callable[[], EncoderSpec]], Callable[[], EncoderSpec]]:
    """Register a zero-argument function returning an EncoderSpec under the function's name."""

    def decorator(fn: Callable[[], EncoderSpec]) -> Callable[[], EncoderSpec]:
        if fn.__name__ in _VARIANTS:
            warnings.warn(f"variant {fn.__name__!r} registered twice; the later one wins", stacklevel=2)
        _VARIANTS[fn.__name__] = Variant(fn.__name__, description, fn)
        return fn

    return decorator


def names() -> list[str]:
    """Registered variant names, in ladder order."""
    return list(_VARIANTS)


def get(name: str) -> Variant:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise UnknownVariantError(f"unknown variant {name!r}; valid variants: {', '.join(_VARIANTS)}") from None


def resolve_spec(name_or_spec: "str | EncoderSpec") -> EncoderSpec:
    """A registered variant's spec, or the spec itself; an unknown name raises UnknownVariantError."""
    if isinstance(name_or_spec, EncoderSpec):
        return name_or_spec
    if not isinstance(name_or_spec, str):
        raise TypeError(f"expected a variant name or an EncoderSpec, got {type(name_or_spec).__name__}")
    return get(name_or_spec).spec


def select(pattern: str) -> list[str]:
    """Names matching 'all', a name, a glob ('perf*') or a comma list of those, in ladder order."""
    wanted: set[str] = set()
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        if part == "all":
            wanted.update(_VARIANTS)
        elif any(ch in part for ch in "*?["):
            matches = fnmatch.filter(_VARIANTS, part)
            if not matches:
                raise UnknownVariantError(f"no variant matches {part!r}; valid variants: {', '.join(_VARIANTS)}")
            wanted.update(matches)
        else:
            wanted.add(get(part).name)
    if not wanted:
        raise UnknownVariantError(f"empty variant selection {pattern!r}; valid variants: {', '.join(_VARIANTS)}")
    return [n for n in _VARIANTS if n in wanted]
