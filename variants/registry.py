"""Named encoder variants, timm-style: `@register` adds a spec builder under its function name."""

from __future__ import annotations

import fnmatch
import importlib
import re
import importlib.util
import sys
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterable

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
    """A registered variant, or one with spec overrides in its name: 'baseline[left_context=128]'."""
    base, overrides = split_overrides(name)
    try:
        variant = _VARIANTS[base]
    except KeyError:
        raise UnknownVariantError(f"unknown variant {base!r}; valid variants: {', '.join(_VARIANTS)}") from None
    if not overrides:
        return variant
    spec = variant.spec.with_text_overrides(overrides)  # checked now: a bad override fails before any run
    return Variant(overridden_name(base, overrides), f"{variant.description}; with {', '.join(f'{k}={v}' for k, v in overrides.items())}",
                   lambda: spec)


_OVERRIDDEN = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<body>[^\[\]]*)\]$")


def split_overrides(name: str) -> tuple[str, dict[str, str]]:
    """'baseline[left_context=128,num_blocks=12]' -> ('baseline', {'left_context': '128', 'num_blocks': '12'})."""
    match = _OVERRIDDEN.match(name.strip())
    if not match:
        return name, {}
    overrides = {}
    for item in (i.strip() for i in match["body"].split(",") if i.strip()):
        field, sep, value = item.partition("=")
        if not sep or not field.strip() or not value.strip():
            raise UnknownVariantError(f"variant {name!r}: expected field=value inside the brackets, got {item!r}")
        overrides[field.strip()] = value.strip()
    return match["base"].strip(), overrides


def overridden_name(base: str, overrides: dict[str, str]) -> str:
    """The name of `base` with `overrides` (in spec field order): 'baseline[left_context=128]'."""
    if not overrides:
        return base
    order = {f: i for i, f in enumerate(EncoderSpec.__dataclass_fields__)}
    body = ",".join(f"{k}={overrides[k]}" for k in sorted(overrides, key=lambda k: order.get(k, len(order))))
    return f"{base}[{body}]"


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
    overridden: list[str] = []
    for part in (p.strip() for p in re.split(r",(?![^\[]*\])", pattern)):  # commas outside brackets
        if not part:
            continue
        if _OVERRIDDEN.match(part):
            overridden.append(get(part).name)
        elif part == "all":
            wanted.update(_VARIANTS)
        elif any(ch in part for ch in "*?["):
            matches = fnmatch.filter(_VARIANTS, part)
            if not matches:
                raise UnknownVariantError(f"no variant matches {part!r}; valid variants: {', '.join(_VARIANTS)}")
            wanted.update(matches)
        else:
            wanted.add(get(part).name)
    if not wanted and not overridden:
        raise UnknownVariantError(f"empty variant selection {pattern!r}; valid variants: {', '.join(_VARIANTS)}")
    return [n for n in _VARIANTS if n in wanted] + list(dict.fromkeys(overridden))


class PluginError(ImportError):
    """A plugin that cannot be imported; str() is one line naming it."""


def is_plugin_file(ref: str) -> bool:
    """A plugin named by a .py path (else by a module name)."""
    return ref.endswith(".py") or Path(ref).is_file()


def load_plugins(refs: Iterable[str]) -> None:
    """Import modules that register more variants with `@register`: a module name ("my_pkg.variants")
    or a path to a .py file. Importing one twice is a no-op, so the parent and every worker can call this."""
    for ref in refs:
        name = None
        try:
            if is_plugin_file(ref):
                path = Path(ref).resolve()
                name = f"bench_plugin_{path.stem}_{abs(hash(str(path))):x}"
                if name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or not path.is_file():
                    raise PluginError(f"plugin {ref!r}: no such file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(ref)
        except PluginError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the plugin raised, the user sees one line
            if name is not None:
                sys.modules.pop(name, None)  # so that loading it again fails again
            raise PluginError(f"plugin {ref!r} cannot be imported: {type(e).__name__}: {e}") from None
