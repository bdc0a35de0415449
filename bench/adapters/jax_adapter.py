"""JAX adapter: build the encoder, compile the step ahead of time, time it, count it with XLA.

The step is `enc.step_fn` jitted on the encoder's `params` and a device input chunk, lowered and
compiled before any timing, so `compile_s` holds the whole trace + XLA compile and no timed step
compiles. The state leaves a step adds to in place (the Performer's running sums) are donated, so XLA
updates them where they lie; a session's state is the pair (those leaves, the rest), each a copy of
the state tree with None where the other holds a leaf.

XLA's persistent compilation cache (BENCH_XLA_CACHE: a folder, default
~/.cache/practical-conformer-bench/xla; "off" compiles every time) keeps compiled steps between
runs, as the ONNX export cache keeps graphs: a later run's compile_s is the trace and a load. The
record's runtime_options says how many programs came from it.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bench import counters, profile, roofline
from bench.adapters import build_encoder, random_frames, second_pass_segment
from bench.machine import device_name
from variants.build import CACHE_ROOT
from variants.state import MAX_PHASES, array_leaves, state_nbytes


_cache_events = {"/jax/compilation_cache/cache_hits": 0, "/jax/compilation_cache/cache_misses": 0}


def _count_cache_event(event: str, **_: Any) -> None:
    if event in _cache_events:
        _cache_events[event] += 1


jax.monitoring.register_event_listener(_count_cache_event)


XLA_CACHE_ENV = "BENCH_XLA_CACHE"
XLA_CACHE_MAX_BYTES = 2 * 1024**3  # the ladder's programs take ~10 MB


def compile_cache_folder() -> Path | None:
    """BENCH_XLA_CACHE's folder (default CACHE_ROOT/xla), or None when it is "off"."""
    folder = os.environ.get(XLA_CACHE_ENV) or str(CACHE_ROOT / "xla")
    return None if folder == "off" else Path(folder)


def use_compile_cache() -> str | None:
    """Point XLA's persistent compilation cache at BENCH_XLA_CACHE's folder (every program, however
    quick to compile: the ladder's take 1-5 s each); the folder, or None when it is "off"."""
    folder = compile_cache_folder()
    if folder is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # bounded, as the ONNX export cache is: JAX deletes the programs used longest ago past this size
    jax.config.update("jax_compilation_cache_max_size", XLA_CACHE_MAX_BYTES)
    return str(folder)


# before anything compiles: JAX decides once per process whether it uses the cache
COMPILE_CACHE = use_compile_cache()


# The state leaves a step updates in place, donated so XLA writes them where they lie: the attention's
# ring of keys and values and its frame count, the Performer's running sums (named as in
# bench.profile.STATE_LEAF_MODULE). Donating the sums saves practical 3-4% at batch 1. The others
# (the conv's and the time reduction's last frames) are rebuilt whole each step: donated, they cost one
# more copy (XLA writes the new buffer aside and copies it into the donated one).
# Not read from variants.schedule.ATTENTION_STATE_KEYS: in `bench ab` a worker imports the BASE
# revision's variants, whose attention leaves may not be in place (a shifting cache and its mask),
# and donating those would time the old model slower than it ran.
IN_PLACE_LEAVES = ("k", "v", "seen", "s", "z")


def _in_place(path) -> bool:
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) in IN_PLACE_LEAVES


def split_state(state) -> tuple[Any, Any]:
    """(the leaves updated in place, the rest): two copies of the state tree, None where the other
    holds a leaf (static metadata such as a StackBuffer's count kept in both)."""
    keep = jax.tree_util.tree_map_with_path
    return (keep(lambda p, a: a if _in_place(p) else None, state),
            keep(lambda p, a: None if _in_place(p) else a, state))


def merge_state(state_in_place, state):
    """The state tree that split_state split."""
    return jax.tree_util.tree_map(lambda a, b: b if a is None else a, state_in_place, state,
                                  is_leaf=lambda a: a is None)


def donating_step(step_fn: Callable, compiler_options: dict | None = None) -> Callable:
    """step_fn(params, x, state) jitted as (params, x, state_in_place, state) -> (y, (state_in_place,
    state)), donating the first part (the argument names are what a profile reads a state op by), with
    the XLA options the model asks for."""
    def step(params, x, state_in_place, state):
        y, new = step_fn(params, x, merge_state(state_in_place, state))
        return y, split_state(new)

    return jax.jit(step, donate_argnums=(2,), compiler_options=compiler_options)


class JaxSession:
    def __init__(self, spec, *, batch: int, chunk_frames: int, dtype: str, native_device: Any, mode: str,
                 seed: int, precision: str):
        self.spec, self.batch, self.mode, self.dtype = spec, batch, mode, dtype
        # Our precision names are JAX's (jax.lax.Precision): set before anything is traced, for the
        # step, the second pass and the peaks alike. The worker process serves one precision.
        jax.config.update("jax_default_matmul_precision", precision)
        self.precision_applied = f"jax_default_matmul_precision={precision}"
        self.native_device = native_device
        self.device_name = device_name(native_device)
        self.encoder = enc = build_encoder(spec, "jax", seed=seed, dtype=dtype, device=native_device)
        self.x = enc.to_native(random_frames(batch, chunk_frames, spec.input_dim))
        self.params = enc.params
        # the model's own XLA options (none in revisions of variants/ older than the ring, for `bench ab`)
        self.compiler_options = getattr(enc, "step_compiler_options", None) or {}
        self._jitted = donating_step(enc.step_fn, self.compiler_options)
        self._compiled: dict[Any, Any] = {}
        before = dict(_cache_events)
        t0 = time.perf_counter()
        self._main = self._compile_for(self.initial_state())
        self._compile_phases()
        self.compile_s = time.perf_counter() - t0
        hits, misses = (_cache_events[k] - before[k] for k in before)
        self.runtime_options = (f"XLA persistent compilation cache {COMPILE_CACHE}: {hits} program(s) loaded from it, "
                                f"{misses} compiled" if COMPILE_CACHE else "XLA persistent compilation cache off")
        if self.compiler_options:
            options = ", ".join(f"{k}={v}" for k, v in self.compiler_options.items())
            self.runtime_options += f"; the step compiled with XLA options {options}"
        self._single = len(self._compiled) == 1

    # ---- compile ---------------------------------------------------------------------------
    def _compile_for(self, state):
        treedef = jax.tree_util.tree_structure(state)
        if treedef not in self._compiled:
            self._compiled[treedef] = self._jitted.lower(self.params, self.x, *state).compile()
        return self._compiled[treedef]

    def _compile_phases(self) -> None:
        """A chunk that is not a multiple of a time reduction's factor leaves a different frame count
        in its buffer (static pytree metadata), i.e. a different program; compile each one now."""
        state = self.initial_state()
        for _ in range(MAX_PHASES):
            before = _avals(state)
            _, state = self._compile_for(state)(self.params, self.x, *state)
            _check_same_avals(before, _avals(state))
            if jax.tree_util.tree_structure(state) in self._compiled:
                return
        raise RuntimeError(f"the step's state structure did not repeat within {MAX_PHASES} steps")

    # ---- session interface -----------------------------------------------------------------
    def initial_state(self):
        return split_state(self.encoder.init_state(self.batch))

    def step(self, state):
        if self._single:
            return self._main(self.params, self.x, *state)
        return self._compiled[jax.tree_util.tree_structure(state)](self.params, self.x, *state)

    @staticmethod
    def sync(tree) -> None:
        jax.block_until_ready(tree)

    @staticmethod
    def all_finite(tree) -> bool:
        return all(bool(jnp.isfinite(a).all()) for a in array_leaves(tree)
                   if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact))

    state_nbytes = staticmethod(state_nbytes)

    def count_flops(self) -> dict[str, counters.FlopCount]:
        return {"xla": counters.xla_count(self._main)}

    def peaks(self) -> roofline.Peaks:
        if self.native_device.platform == "cpu":
            return roofline.host_peaks(self.dtype)
        n = 8192
        dt = jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32
        with jax.default_device(self.native_device):
            a = jnp.ones((n, n), dt)
            big = jnp.ones((1 << 28) // jnp.dtype(dt).itemsize, dt)  # 256 MiB
        mm = jax.jit(lambda a: a @ a)
        cp = jax.jit(lambda v: v + 1)  # streams one read + one write per element
        return roofline.measure_device_peaks(
            ("jax", self.native_device.platform, self.native_device.id, self.dtype),
            lambda: mm(a), lambda: cp(big), jax.block_until_ready, 2.0 * n**3, 2.0 * big.nbytes,
            f"jax on {self.device_name}: {n}^2 {self.dtype} matmul, 256 MiB elementwise copy (read+write)")

    def second_pass_step(self) -> Callable[[], Any] | None:
        return second_pass_segment(self.encoder, self.batch, self.sync)

    profile_source = "jax.profiler trace of the compiled step: XLA ops, module paths from their metadata"

    def profile_ops(self, state, steps: int) -> tuple[list[profile.Op], float, Any]:
        """`steps` synchronised steps under JAX's profiler: every executed XLA op with the module path
        XLA kept in its metadata (flax's name stack), their wall time, and the state after them."""
        paths: dict[str, str] = {}
        for compiled in self._compiled.values():
            for name, path in _hlo_op_paths(compiled.as_text()).items():
                paths.setdefault(name, path)
        with tempfile.TemporaryDirectory() as folder:
            with jax.profiler.trace(folder):
                t0 = time.perf_counter()
                for _ in range(steps):
                    y, state = self.step(state)
                    self.sync((y, state))
                wall_s = time.perf_counter() - t0
            (trace,) = Path(folder).rglob("*.xplane.pb")
            data = jax.profiler.ProfileData.from_file(str(trace))
            ops = [profile.Op(event.name, paths[event.name], event.start_ns / 1e9,
                              (event.start_ns + event.duration_ns) / 1e9)
                   for plane in data.planes for line in plane.lines if line.name != "python"
                   for event in line.events if event.name in paths]
        return ops, wall_s, state


_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = [^(]*?(\w[\w\-]*)\(([^)]*)\)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{\s*$")
_OPERAND = re.compile(r"%?([\w.\-]+)")


def _hlo_op_paths(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the module path of the JAX op it came from (metadata op_name).

    XLA's own instructions have no metadata: a fusion or wrapped op takes its computation's root's
    (or else the first one it holds); a parameter's path is its argument's name (bench.profile reads
    a state leaf as the module that owns it); anything else (e.g. a layout copy of the state, a rewritten dot) takes its
    weight operand's, or else its first operand's that has one."""
    paths: dict[str, str] = {}
    operands: dict[str, list[str]] = {}
    calls: dict[str, str] = {}
    roots: dict[str, str] = {}
    first: dict[str, str] = {}
    computation = None
    for line in hlo_text.splitlines():
        if (header := _COMPUTATION.match(line)) and " = " not in line:
            computation = header.group(1)
            continue
        if not (instruction := _HLO_INSTRUCTION.match(line)):
            continue
        name, opcode, args = instruction.groups()
        op_name = _OP_NAME.search(line)
        paths[name] = op_name.group(1) if op_name else ""
        if opcode == "parameter":  # its argument ("state['blocks'][11]['s']") or HLO name ("params__blocks_3__ffn_0...")
            paths[name] = op_name.group(1) if op_name else "/".join(p for p in re.split(r"_{2,}|\.", name) if p)
        if not op_name:
            operands[name] = _OPERAND.findall(args)
            if called := _CALLS.search(line):
                calls[name] = called.group(1)
        if computation and op_name:
            first.setdefault(computation, op_name.group(1))
            if line.lstrip().startswith("ROOT"):
                roots[computation] = op_name.group(1)
    for name, computation in calls.items():
        paths[name] = roots.get(computation) or first.get(computation, "")
    for name, args in operands.items():  # in text order, so an operand is resolved before its user
        if not paths[name]:  # a weight names its module best (a dot's activation comes from the layer before)
            known = [paths[a] for a in args if paths.get(a)]
            paths[name] = next((p for p in known if p.startswith("params")), known[0] if known else "")
    return paths


def host_rates(dtype: str, n: int, nbytes: int) -> dict[str, float]:
    """JAX's matmul rate and read/copy bandwidth on the host CPU (for bench.roofline.host_peaks)."""
    dt = jnp.dtype(dtype)
    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), dt), cpu)
    big = jax.device_put(jnp.ones(nbytes // dt.itemsize, dt), cpu)
    mm, total, plus = jax.jit(lambda a: a @ a), jax.jit(jnp.sum), jax.jit(lambda v: v + 1)
    return roofline.host_rates_fn(lambda: mm(a), lambda: total(big), lambda: plus(big), jax.block_until_ready,
                                  n, big.nbytes)


def _avals(state) -> dict[str, tuple]:
    return {jax.tree_util.keystr(path): (leaf.shape, str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _check_same_avals(before: dict, after: dict) -> None:
    """A streaming step must return its state in the shapes and dtypes it took it (else the next
    step recompiles, or an AOT-compiled step refuses it); name the first leaf that drifts."""
    for path, (shape, dtype) in before.items():
        if path in after and after[path] != (shape, dtype):
            raise TypeError(f"the step returns state{path} as {after[path][1]}{list(after[path][0])} but takes it "
                            f"as {dtype}{list(shape)}")


def prepare(spec, **kwargs) -> JaxSession:
    with warnings.catch_warnings():
        # CPU can't always alias a donated buffer to an output; harmless
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        return JaxSession(spec, **kwargs)
