"""bench.toml: the run defaults (what `bench run` measures with no flags) as frozen dataclasses.

Every problem in the file becomes one `ConfigError` whose message names the file, the key and,
where it can be found, the line, so the CLI can print it as a single line and exit 2.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("bench.toml")
FRAMEWORKS = ("jax", "torch")
DEVICES = ("cpu", "gpu", "tpu")
DTYPES = ("float32", "bfloat16")
TORCH_MODES = ("eager", "compile")
JAX_MODES = ("jit",)
LADDER = ("baseline", "conv_lower", "conv_lower_downsized", "practical", "practical_cascade")


class ConfigError(ValueError):
    """A problem in a config or budget file; str() is one line: `FILE[:LINE]: KEY: what is wrong`."""

    def __init__(self, path: str | Path | None, key: str | None, message: str, line: int | None = None):
        self.path, self.key, self.line, self.message = path, key, line, message
        where = str(path) if path is not None else "<config>"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


@dataclass(frozen=True)
class MeasureConfig:
    """How long each measurement runs; `bench.measure.MeasureSettings` takes the same field names."""

    warmup_iterations: int = 3
    min_iterations: int = 20
    min_time_s: float = 1.0
    max_time_s: float = 5.0  # stop timing a very slow step (big batch on a small CPU) after this long
    counters: bool = True  # cross-check FLOPs with XLA / FlopCounterMode / fvcore (seconds per full-size model)
    second_pass: bool = True  # time the cascade's second pass too
    roofline: bool = True  # measure this machine's peak FLOP/s and bandwidth (once per process)


@dataclass(frozen=True)
class RunConfig:
    """What one `bench run` measures: variants x frameworks x modes x batches on one device."""

    variants: str = ",".join(LADDER)  # anything variants.select() takes: "all", "a,b", "perf*"
    frameworks: tuple[str, ...] = FRAMEWORKS
    device: str = "cpu"
    batches: tuple[int, ...] = (1, 64)  # a device batch (one stream) and a cloud-serving batch
    chunk_frames: int = 6  # 10 ms input frames per streaming step: 60 ms completes a frame at 30 and 60 ms rates
    dtype: str = "float32"
    torch_modes: tuple[str, ...] = ("eager",)
    jax_modes: tuple[str, ...] = JAX_MODES
    out_dir: str = "reports/runs"
    machine_tag: str | None = None  # names this machine for absolute latency budgets; None: they are skipped

    def modes(self, framework: str) -> tuple[str, ...]:
        return self.torch_modes if framework == "torch" else self.jax_modes


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    quick: MeasureConfig = field(
        default_factory=lambda: MeasureConfig(warmup_iterations=1, min_iterations=3, min_time_s=0.0, max_time_s=1.0,
                                              counters=False, second_pass=False, roofline=False)
    )
    path: Path | None = None

    def measure_for(self, quick: bool) -> MeasureConfig:
        return self.quick if quick else self.measure

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path) if self.path is not None else None
        return data


# ---- reading TOML with locations ---------------------------------------------------------------

_TOMLLIB_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


def read_toml(path: str | Path) -> tuple[dict[str, Any], str]:
    """Parse a TOML file; a missing file or a syntax error becomes a ConfigError with the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, f"cannot read: {e}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        msg = str(e).splitlines()[0]
        m = _TOMLLIB_LINE.search(msg)
        line = int(m.group(1)) if m else None
        if line is None and "end of document" in msg:  # e.g. an array left open: point at the last line
            line = max(len(text.splitlines()), 1)
        raise ConfigError(path, None, f"invalid TOML: {_TOMLLIB_LINE.sub('', msg).strip()}", line) from None


def locate(text: str, key_path: tuple[str | int, ...]) -> int | None:
    """Best-effort line (1-based) of a key such as ("run", "batches") or ("budgets", "cpu", 2, "max_ratio").

    An int in the path is the index in an array of tables. Falls back to the table's header
    line when the key itself is absent (e.g. a required key that is missing). Dotted keys and
    inline tables are not followed; None when nothing matches.
    """
    current: tuple[str | int, ...] = ()
    seen_arrays: dict[tuple[str | int, ...], int] = {}
    header_line: int | None = None
    target_table = key_path[:-1]
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER.match(line)
        if header and stripped.startswith("["):
            names = tuple(part.strip().strip("\"'") for part in header.group(2).split("."))
            if header.group(1) == "[[":
                index = seen_arrays.get(names, -1) + 1
                seen_arrays[names] = index
                current = names + (index,)
            else:
                current = names
            if current == target_table or current == key_path:
                header_line = number
            continue
        key = _KEY.match(line)
        if key and current + (key.group(1).strip().strip("\"'"),) == key_path:
            return number
    return header_line


# ---- typed fields --------------------------------------------------------------------------------


class TableReader:
    """Pulls typed values out of one TOML table, raising ConfigErrors that point at the key."""

    def __init__(self, path: Path | None, text: str, table: dict[str, Any], prefix: tuple[str | int, ...]):
        self.path, self.text, self.table, self.prefix = path, text, table, prefix

    def location(self, key: str | None = None) -> tuple[str | None, int | None]:
        """(dotted key such as "budgets.cpu[2].max_ratio", its line) for messages."""
        key_path = self.prefix + ((key,) if key else ())
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else p for p in key_path).replace(".[", "[")
        return dotted or None, locate(self.text, key_path) if self.text else None

    def error(self, key: str | None, message: str) -> ConfigError:
        dotted, line = self.location(key)
        return ConfigError(self.path, dotted, message, line)

    def reject_unknown(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                raise self.error(key, f"unknown key; expected one of: {', '.join(sorted(allowed))}")

    def string(self, key: str, default: Any, choices: tuple[str, ...] | None = None) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def strings(self, key: str, default: tuple[str, ...], choices: tuple[str, ...]) -> tuple[str, ...]:
        if key not in self.table:
            return default
        value = self.table[key]
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a non-empty list of strings, got {self.table[key]!r}")
        for v in value:
            if v not in choices:
                raise self.error(key, f"{v!r} is not one of {', '.join(choices)}")
        return tuple(dict.fromkeys(value))

    def positive_int(self, key: str, default: int) -> int:
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(key, f"expected a positive integer, got {value!r}")
        return value

    def positive_ints(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        if key not in self.table:
            return default
        value = self.table[key]
        value = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            raise self.error(key, f"expected a non-empty list of positive integers, got {self.table[key]!r}")
        return tuple(dict.fromkeys(value))

    def non_negative_int(self, key: str, default: int) -> int:
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(key, f"expected an integer >= 0, got {value!r}")
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0, strict: bool = True) -> float:
        """A number > minimum (strict) or >= minimum."""
        if key not in self.table:
            return default
        value = self.table[key]
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or (value <= minimum if strict else value < minimum):
            raise self.error(key, f"expected a number {'>' if strict else '>='} {minimum:g}, got {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def sub(self, key: str) -> "TableReader":
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {value!r}")
        return TableReader(self.path, self.text, value, self.prefix + (key,))


def _measure(reader: TableReader, base: MeasureConfig, allow: frozenset[str] = frozenset()) -> MeasureConfig:
    names = {f.name for f in dataclasses.fields(MeasureConfig)}
    reader.reject_unknown(names | set(allow))
    return MeasureConfig(
        warmup_iterations=reader.non_negative_int("warmup_iterations", base.warmup_iterations),
        min_iterations=reader.positive_int("min_iterations", base.min_iterations),
        min_time_s=reader.number("min_time_s", base.min_time_s, strict=False),
        max_time_s=reader.number("max_time_s", base.max_time_s),
        counters=reader.boolean("counters", base.counters),
        second_pass=reader.boolean("second_pass", base.second_pass),
        roofline=reader.boolean("roofline", base.roofline),
    )


def parse_config(data: dict[str, Any], path: Path | None = None, text: str = "") -> Config:
    """Build a Config from parsed TOML; unknown tables are left to their owners (e.g. [budgets])."""
    root = TableReader(path, text, data, ())
    root.reject_unknown({"run", "measure", "budgets"})
    defaults = Config()

    run = root.sub("run")
    run.reject_unknown({f.name for f in dataclasses.fields(RunConfig)})
    variants = run.table.get("variants", defaults.run.variants)
    if isinstance(variants, list) and variants and all(isinstance(v, str) for v in variants):
        variants = ",".join(variants)
    if not isinstance(variants, str) or not variants.strip():
        raise run.error("variants", f"expected a name, a glob, 'all' or a list of names, got {variants!r}")
    machine_tag = run.string("machine_tag", None)
    run_config = RunConfig(
        variants=variants,
        frameworks=run.strings("frameworks", defaults.run.frameworks, FRAMEWORKS),
        device=run.string("device", defaults.run.device, DEVICES),
        batches=run.positive_ints("batches", defaults.run.batches),
        chunk_frames=run.positive_int("chunk_frames", defaults.run.chunk_frames),
        dtype=run.string("dtype", defaults.run.dtype, DTYPES),
        torch_modes=run.strings("torch_modes", defaults.run.torch_modes, TORCH_MODES),
        jax_modes=run.strings("jax_modes", defaults.run.jax_modes, JAX_MODES),
        out_dir=run.string("out_dir", defaults.run.out_dir),
        machine_tag=machine_tag or None,
    )

    measure_reader = root.sub("measure")
    measure = _measure(measure_reader, defaults.measure, allow=frozenset({"quick"}))
    quick = _measure(measure_reader.sub("quick"), defaults.quick)
    return Config(run=run_config, measure=measure, quick=quick, path=path)


def load_config(path: str | Path | None = None) -> Config:
    """Load bench.toml (or `path`); without a path and without ./bench.toml, the built-in defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    data, text = read_toml(path)
    return parse_config(data, path, text)
