"""bench.toml and `bench run`'s flags -> one Config: what a run measures (RunConfig) and how long (MeasureSettings).

The repository's bench.toml is the single source of every default and preset. Every problem in a
file becomes one `ConfigError` naming the file, the key and, where it can be found, the line.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.schema import DEVICES, DTYPES, FRAMEWORKS, MODES, ONE_DEVICE_MODES, PRECISIONS

DEFAULT_CONFIG_PATH = Path("bench.toml")  # the user's, in the folder `bench` runs from
# The repository's bench.toml holds every default and preset; a user's file only overrides keys of it.
SHIPPED_CONFIG_PATH = Path(__file__).resolve().parent.parent / "bench.toml"


class ConfigError(ValueError):
    """A problem in a config or budget file; str() is one line: `FILE[:LINE]: KEY: what is wrong`."""

    def __init__(self, path: str | Path | None, key: str | None, message: str, line: int | None = None):
        self.path, self.key, self.line, self.message = path, key, line, message
        where = str(path) if path is not None else "<config>"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


class FlagError(ValueError):
    """A `bench run` flag with a bad value; str() is the one line shown to the user."""


@dataclass(frozen=True)
class MeasureSettings:
    """How long each measurement runs: bench.toml's [measure] table, or [measure.quick] for `--quick`."""

    warmup_iterations: int  # untimed steps once a session is built, before its first round
    rounds: int  # interleaved rounds at least: each times every compared variant for one burst
    steps_per_round: int  # timed steps in one burst
    round_warmup: int  # untimed steps at the start of each burst (caches refill after the others ran)
    warmup_rounds: int  # whole interleaved rounds run first and not kept (the first rounds after building run slow)
    min_time_s: float  # add rounds until every variant has this much timed step time...
    max_time_s: float  # ...unless the group's rounds have already taken this long
    # ...and until every ratio the group reports (speedup over the baseline; in `bench ab`, head over
    # base) has its 95% interval within +-interval_target of its estimate (0: no such target)
    interval_target: float
    timeout_s: float  # a worker that does not answer one request (build, compile, a burst) within this fails
    prepare_workers: int  # workers that build and compile at once (before any timing; compile is mostly serial)
    counters: bool  # cross-check FLOPs with XLA / FlopCounterMode / fvcore (seconds per full-size model)
    second_pass: bool  # time the cascade's second pass too
    roofline: bool  # measure this machine's peak FLOP/s and bandwidth
    profile: bool  # after the rounds, split a step's time into op classes (bench.profile; `bench run --profile`)
    profile_steps: int  # steps profiled (and as many timed plainly just before, in the same process) (once per process)


THREADS_AUTO = "auto"  # [run] threads: every usable core, one fewer per core other processes keep busy


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What one `bench run` measures: variants x frameworks x modes x batches on one device."""

    variants: str  # anything variants.select() takes: "all", "a,b", "perf*"
    frameworks: tuple[str, ...]
    device: str
    batches: tuple[int, ...]
    chunk_frames: int  # 10 ms input frames per streaming step
    dtype: str
    precision: str  # how float32 matmuls compute (bench.schema.PRECISIONS), the same in every framework
    torch_modes: tuple[str, ...]
    jax_modes: tuple[str, ...] = MODES["jax"]
    out_dir: str  # a run writes <out_dir>/<UTC time>-<device>/, or exactly the folder `--out` names
    machine_tag: str | None = None  # names this machine for absolute latency budgets; None: they are skipped
    plugins: tuple[str, ...] = ()  # modules or .py files that register more variants (workers import them too)
    # Spec fields to set, each with its values ([run.set], `--set field=a,b`): every combination is a
    # cell, and every variant is measured in every cell, named by it ('baseline[left_context=128]').
    spec_set: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Threads each worker computes with (THREADS_AUTO, or a number: fewer than the usable cores also
    # confines each worker to that many cores)
    threads: int | str = THREADS_AUTO

    def modes(self, framework: str) -> tuple[str, ...]:
        return {"torch": self.torch_modes, "jax": self.jax_modes}.get(framework, MODES[framework])


@dataclass(frozen=True)
class AcceptedSlowdown:
    """A slowdown a change declares on purpose ([[ab.accept]]): `bench ab` reports it as accepted, not as a pass."""

    variant: str
    reason: str
    framework: str | None = None  # None: every framework
    batch: int | None = None  # None: every batch

    def covers(self, variant: str, framework: str, batch: int) -> bool:
        return self.variant == variant and self.framework in (None, framework) and self.batch in (None, batch)


@dataclass(frozen=True)
class AbSettings:
    """`bench ab`'s gate: a row fails when slower by more than `threshold` and its interval excludes no change."""

    threshold: float
    accept: tuple[AcceptedSlowdown, ...] = ()


@dataclass(frozen=True)
class Config:
    run: RunConfig
    measure: MeasureSettings
    quick: MeasureSettings
    ab: AbSettings
    sweep: RunConfig  # `bench sweep`: [sweep] over [run] (its grid in [sweep.set])
    sweep_quick: bool  # `bench sweep` times with [measure.quick] (else [measure])
    path: Path | None = None

    def measure_for(self, quick: bool) -> MeasureSettings:
        return self.quick if quick else self.measure

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path) if self.path is not None else None
        return data

    def as_used(self, run: RunConfig, quick: bool, settings: MeasureSettings | None = None) -> dict[str, Any]:
        """This config as a run used it, for its metadata: `run` (flags applied) in place of [run], and
        the [measure] preset that applied (or `settings`, when flags changed it)."""
        data = dataclasses.replace(self, run=run).to_dict()
        data["quick_run"] = quick
        data["measure_used"] = dataclasses.asdict(settings) if settings else data["quick" if quick else "measure"]
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


REQUIRED = object()  # a default meaning "the file must set this key"


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

    def _absent(self, key: str, default: Any) -> Any:
        if default is REQUIRED:
            raise self.error(key, "missing; every key of this table needs a value")
        return default

    def reject_unknown(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                raise self.error(key, f"unknown key; expected one of: {', '.join(sorted(allowed))}")

    def string(self, key: str, default: Any, choices: tuple[str, ...] | None = None) -> Any:
        if key not in self.table:
            return self._absent(key, default)
        value = self.table[key]
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def strings(self, key: str, default: tuple[str, ...], choices: tuple[str, ...]) -> tuple[str, ...]:
        if key not in self.table:
            return self._absent(key, default)
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
            return self._absent(key, default)
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(key, f"expected a positive integer, got {value!r}")
        return value

    def positive_ints(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        if key not in self.table:
            return self._absent(key, default)
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
            return self._absent(key, default)
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(key, f"expected an integer >= 0, got {value!r}")
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0, strict: bool = True) -> float:
        """A number > minimum (strict) or >= minimum."""
        if key not in self.table:
            return self._absent(key, default)
        value = self.table[key]
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or (value <= minimum if strict else value < minimum):
            raise self.error(key, f"expected a number {'>' if strict else '>='} {minimum:g}, got {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.table:
            return self._absent(key, default)
        value = self.table[key]
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def sub(self, key: str) -> "TableReader":
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {value!r}")
        return TableReader(self.path, self.text, value, self.prefix + (key,))


def _measure(reader: TableReader, base: MeasureSettings | None,
             allow: frozenset[str] = frozenset()) -> MeasureSettings:
    """[measure] or [measure.quick]: keys missing from the table come from `base` (None: all required)."""
    reader.reject_unknown({f.name for f in dataclasses.fields(MeasureSettings)} | set(allow))

    def default(name: str) -> Any:
        return REQUIRED if base is None else getattr(base, name)

    return MeasureSettings(
        warmup_iterations=reader.non_negative_int("warmup_iterations", default("warmup_iterations")),
        rounds=reader.positive_int("rounds", default("rounds")),
        steps_per_round=reader.positive_int("steps_per_round", default("steps_per_round")),
        round_warmup=reader.non_negative_int("round_warmup", default("round_warmup")),
        warmup_rounds=reader.non_negative_int("warmup_rounds", default("warmup_rounds")),
        min_time_s=reader.number("min_time_s", default("min_time_s"), strict=False),
        max_time_s=reader.number("max_time_s", default("max_time_s")),
        interval_target=reader.number("interval_target", default("interval_target"), strict=False),
        timeout_s=reader.number("timeout_s", default("timeout_s")),
        prepare_workers=reader.positive_int("prepare_workers", default("prepare_workers")),
        counters=reader.boolean("counters", default("counters")),
        second_pass=reader.boolean("second_pass", default("second_pass")),
        roofline=reader.boolean("roofline", default("roofline")),
        profile=reader.boolean("profile", default("profile")),
        profile_steps=reader.positive_int("profile_steps", default("profile_steps")),
    )


def parse_config(data: dict[str, Any], path: Path | None = None, text: str = "", base: Config | None = None) -> Config:
    """Build a Config from parsed TOML; keys it leaves out come from `base` (None: every [run] and
    [measure] key is required). Unknown tables are left to their owners (e.g. [budgets])."""
    root = TableReader(path, text, data, ())
    root.reject_unknown({"run", "measure", "budgets", "ab", "sweep"})

    run_config = _run_config(root.sub("run"), base.run if base else None)
    sweep_reader = root.sub("sweep")
    sweep_quick = sweep_reader.boolean("quick", True if base is None else base.sweep_quick)
    sweep_reader.table = {k: v for k, v in sweep_reader.table.items() if k != "quick"}
    # a [sweep] key a user's file leaves out comes from the shipped [sweep], then from [run]
    sweep = _run_config(sweep_reader, base.sweep if base else run_config)

    measure_reader = root.sub("measure")
    measure = _measure(measure_reader, base.measure if base else None, allow=frozenset({"quick"}))
    quick = _measure(measure_reader.sub("quick"), base.quick if base else None)
    ab = _ab(root.sub("ab"), base.ab if base else None)
    return Config(run=run_config, measure=measure, quick=quick, ab=ab, sweep=sweep, sweep_quick=sweep_quick, path=path)


def _run_config(run: TableReader, base: RunConfig | None) -> RunConfig:
    """[run] (or [sweep]) as a RunConfig; keys it leaves out come from `base` (None: all required)."""
    run.reject_unknown({f.name for f in dataclasses.fields(RunConfig)} - {"spec_set"} | {"set"})

    def default(name: str) -> Any:
        return REQUIRED if base is None else getattr(base, name)

    variants = run.table.get("variants", default("variants"))
    if variants is REQUIRED:
        raise run.error("variants", "missing; every key of this table needs a value")
    if isinstance(variants, list) and variants and all(isinstance(v, str) for v in variants):
        variants = ",".join(variants)
    if not isinstance(variants, str) or not variants.strip():
        raise run.error("variants", f"expected a name, a glob, 'all' or a list of names, got {variants!r}")
    return RunConfig(
        variants=variants,
        frameworks=run.strings("frameworks", default("frameworks"), FRAMEWORKS),
        device=run.string("device", default("device"), DEVICES),
        batches=run.positive_ints("batches", default("batches")),
        chunk_frames=run.positive_int("chunk_frames", default("chunk_frames")),
        dtype=run.string("dtype", default("dtype"), DTYPES),
        precision=run.string("precision", default("precision"), PRECISIONS),
        torch_modes=run.strings("torch_modes", default("torch_modes"), MODES["torch"]),
        jax_modes=run.strings("jax_modes", MODES["jax"] if base is None else base.jax_modes, MODES["jax"]),
        out_dir=run.string("out_dir", default("out_dir")),
        machine_tag=run.string("machine_tag", None if base is None else base.machine_tag) or None,
        plugins=_plugins(run, () if base is None else base.plugins),
        spec_set=_spec_set(run, () if base is None else base.spec_set),
        threads=_threads(run, THREADS_AUTO if base is None else base.threads),
    )


def parse_threads(value: Any) -> int | str:
    """[run] threads or --threads: "auto" or a positive number of threads; ValueError says why not."""
    if value == THREADS_AUTO:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected {THREADS_AUTO!r} or a positive number of threads, got {value!r}")
    return value


def _threads(run: TableReader, default: int | str) -> int | str:
    if "threads" not in run.table:
        return default
    try:
        return parse_threads(run.table["threads"])
    except ValueError as e:
        raise run.error("threads", str(e)) from None


def _spec_set(run: TableReader, default: tuple) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """[run.set]: spec field -> a value or a list of values, e.g. left_context = [32, 64, 128]."""
    from variants.spec import SpecOverrideError, parse_field

    if "set" not in run.table:
        return default
    table = run.sub("set")
    out = []
    for field, value in table.table.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values):
            raise table.error(field, f"expected a number, a name or a list of them, got {value!r}")
        try:
            for v in values:
                parse_field(field, str(v))
        except SpecOverrideError as e:
            raise table.error(field, str(e)) from None
        out.append((field, tuple(str(v) for v in values)))
    return tuple(out)


def parse_spec_set(flags: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`--set left_context=32,64 --set num_blocks=12` -> (("left_context", ("32", "64")), ("num_blocks", ("12",)))."""
    out: dict[str, tuple[str, ...]] = {}
    for flag in flags:
        field, sep, values = flag.partition("=")
        parts = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not field.strip() or not parts:
            raise FlagError(f"--set {flag!r}: expected FIELD=VALUE[,VALUE...], e.g. --set left_context=32,64")
        out[field.strip()] = parts
    return tuple(out.items())


def expand_cells(names: list[str], spec_set: tuple[tuple[str, tuple[str, ...]], ...]) -> list[str]:
    """Every variant in every cell of the spec_set grid, cell by cell: the names `bench run` measures."""
    import itertools

    import variants
    from variants.registry import overridden_name

    if not spec_set:
        return names
    fields = [field for field, _ in spec_set]
    cells = [dict(zip(fields, combo)) for combo in itertools.product(*(values for _, values in spec_set))]
    out = [overridden_name(name, cell) for cell in cells for name in names]
    for name in out:
        variants.get(name)  # a value the spec rejects fails here, as one line, before anything runs
    return out


def _plugins(run: TableReader, default: tuple[str, ...]) -> tuple[str, ...]:
    """[run] plugins: module names or .py paths; a relative path is read from the config file's folder."""
    if "plugins" not in run.table:
        return default
    value = run.table["plugins"]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise run.error("plugins", f"expected a list of module names or .py paths, got {value!r}")
    folder = run.path.parent if run.path is not None else Path.cwd()
    from variants.registry import is_plugin_file

    return tuple(str((folder / v).resolve()) if is_plugin_file(str(folder / v)) else v for v in value)


def _ab(reader: TableReader, base: AbSettings | None) -> AbSettings:
    """[ab]: the gate's threshold and the [[ab.accept]] list of declared slowdowns."""
    reader.reject_unknown({"threshold", "accept"})
    threshold = reader.number("threshold", REQUIRED if base is None else base.threshold)
    entries = reader.table.get("accept", [])
    if not isinstance(entries, list):
        raise reader.error("accept", "expected [[ab.accept]] tables")
    accept = []
    for index, entry in enumerate(entries):
        item = TableReader(reader.path, reader.text, entry, reader.prefix + ("accept", index))
        item.reject_unknown({"variant", "reason", "framework", "batch"})
        variant, reason = item.string("variant", None), item.string("reason", None)
        if not variant or not reason:
            raise item.error(None, "an accepted slowdown needs a variant and a reason")
        framework = item.string("framework", None, FRAMEWORKS)
        batch = item.positive_int("batch", None) if "batch" in item.table else None
        accept.append(AcceptedSlowdown(variant, reason, framework, batch))
    return AbSettings(threshold=threshold, accept=tuple(accept) if entries or base is None else base.accept)


def _read_config(path: Path, base: Config | None) -> Config:
    data, text = read_toml(path)
    return parse_config(data, path, text, base)


def load_config(path: str | Path | None = None) -> Config:
    """bench.toml as a Config: the repository's bench.toml, overridden key by key by `path` (or by
    ./bench.toml when there is one and no path is given)."""
    shipped = _read_config(SHIPPED_CONFIG_PATH, None)
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return shipped
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    if path.exists() and path.resolve() == SHIPPED_CONFIG_PATH:
        return dataclasses.replace(shipped, path=path)  # the path as given: it is recorded in results.json
    return _read_config(path, shipped)


# ---- `bench run` flags ---------------------------------------------------------------------------


def _parse_batches(text: str) -> tuple[int, ...]:
    """'1,64' -> (1, 64); every entry a positive integer."""
    batches = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise FlagError(f"--batch {text!r}: {part!r} is not an integer (e.g. --batch 1,64)") from None
        if value < 1:
            raise FlagError(f"--batch {text!r}: batch sizes must be >= 1, got {value}")
        batches.append(value)
    return tuple(dict.fromkeys(batches))


def _parse_frameworks(text: str) -> tuple[str, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["all"]:
        return FRAMEWORKS
    for part in parts:
        if part not in FRAMEWORKS:
            raise FlagError(f"--framework {text!r}: {part!r} is not one of {', '.join(FRAMEWORKS)}, all")
    if not parts:
        raise FlagError("--framework is empty; use jax, torch or all")
    return tuple(dict.fromkeys(parts))


def _check_chunk(chunk: int, variant_names: list[str]) -> None:
    """A step must complete whole output frames for every variant: chunk a multiple of each output stride."""
    import variants

    if chunk < 1:
        raise FlagError(f"--chunk must be a positive number of 10 ms input frames, got {chunk}")
    strides = {name: variants.get(name).spec.output_stride for name in variant_names}
    bad = {name: s for name, s in strides.items() if chunk % s}
    if bad:
        need = math.lcm(*strides.values())
        name, stride = next(iter(bad.items()))
        raise FlagError(
            f"--chunk {chunk} does not complete whole frames for {name} (needs a multiple of {stride} input frames); "
            f"use a multiple of {need} for this selection, e.g. --chunk {need}"
        )


def _default_out(base: str, device: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(base) / f"{stamp}-{device}"


def apply_flags(config: Config, *, variant: str | None = None, framework: str | None = None,
                batch: str | None = None, chunk: int | None = None, torch_mode: str | None = None,
                dtype: str | None = None, precision: str | None = None, device: str | None = None,
                out: Path | None = None,
                machine_tag: str | None = None, plugins: tuple[str, ...] = (),
                spec_set: tuple[str, ...] = (), threads: str | None = None) -> RunConfig:
    """The run `bench run` makes: `config.run` with each flag given (None: not given) in its place.

    The variant selection is resolved to names, `out_dir` to the run folder itself (a fresh
    <out_dir>/<UTC time>-<device>/ without --out). FlagError (or the registry's UnknownVariantError)
    for a bad value."""
    import variants

    run = config.run
    plugins = tuple(dict.fromkeys((*run.plugins, *plugin_refs(plugins))))
    variants.load_plugins(plugins)  # the selection may name a plugin's variants
    spec_grid = dict(run.spec_set) | dict(parse_spec_set(spec_set))  # a flag replaces the config's field
    names = expand_cells(variants.select(variant if variant is not None else run.variants),
                         tuple(spec_grid.items()))
    frameworks = _parse_frameworks(framework) if framework is not None else run.frameworks
    batches = _parse_batches(batch) if batch is not None else run.batches
    chunk_frames = chunk if chunk is not None else run.chunk_frames
    _check_chunk(chunk_frames, names)
    torch_modes = run.torch_modes
    if torch_mode is not None:
        torch_modes = tuple(m.strip() for m in torch_mode.split(",") if m.strip())
        if not torch_modes or any(m not in MODES["torch"] for m in torch_modes):
            raise FlagError(f"--torch-mode {torch_mode!r}: choose from {', '.join(MODES['torch'])}")
        for m in torch_modes:
            need, why = ONE_DEVICE_MODES.get(("torch", m), (None, ""))
            if need is not None and (device or run.device) != need:
                raise FlagError(f"--torch-mode {m}: {why}")
    if dtype is not None and dtype not in DTYPES:
        raise FlagError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    if precision is not None and precision not in PRECISIONS:
        raise FlagError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    device = device if device is not None else run.device
    if device not in DEVICES:
        raise FlagError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if threads is not None:
        try:
            threads = parse_threads(threads)
        except ValueError as e:
            raise FlagError(f"--threads: {e}") from None
    return dataclasses.replace(
        run, variants=",".join(names), frameworks=frameworks, batches=batches, chunk_frames=chunk_frames,
        torch_modes=torch_modes, dtype=dtype or run.dtype, precision=precision or run.precision, device=device,
        out_dir=str(out if out is not None else _default_out(run.out_dir, device)),
        machine_tag=machine_tag or run.machine_tag, plugins=plugins, spec_set=tuple(spec_grid.items()),
        threads=run.threads if threads is None else threads)


def plugin_refs(refs: tuple[str, ...]) -> tuple[str, ...]:
    """--plugin values as workers can import them from any folder: a .py path made absolute."""
    from variants.registry import is_plugin_file

    return tuple(str(Path(r).resolve()) if is_plugin_file(r) else r for r in refs)
