"""The `bench` command: list variants, run the study, report/plot/compare result folders, check budgets.

Framework imports (jax, torch) and pandas happen inside the verbs that need them, so `bench --help`
and `bench list` start instantly. Bad input exits 2 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from typer.core import TyperGroup

from bench.config import ConfigError, FlagError, apply_flags, load_config

EXIT_FAILED = 1  # the run finished but some measurement (or budget) failed
EXIT_USAGE = 2  # bad flags, a malformed bench.toml, a device that is not here, a folder that cannot be written


# Flags `bench run` and `bench ab` share: each run flag overrides the matching bench.toml [run] key.
VariantFlag = Annotated[Optional[str], typer.Option("--variant", "-v", help="all, NAME[,NAME] or a glob ('perf*'). [default: bench.toml run.variants]")]
DeviceFlag = Annotated[Optional[str], typer.Option("--device", "-d", help="cpu, gpu or tpu. [default: bench.toml run.device]")]
FrameworkFlag = Annotated[Optional[str], typer.Option("--framework", "-f", help="jax, torch, onnxruntime, a list (jax,onnxruntime) or all. [default: bench.toml run.frameworks]")]
BatchFlag = Annotated[Optional[str], typer.Option("--batch", "-b", help="Comma-separated batch sizes, e.g. 1,64. [default: bench.toml run.batches]")]
ChunkFlag = Annotated[Optional[int], typer.Option("--chunk", "-c", help="Input frames (10 ms) per streaming step. [default: bench.toml run.chunk_frames]")]
TorchModeFlag = Annotated[Optional[str], typer.Option("--torch-mode", help="eager, compile, cudagraphs (CUDA graph replay; --device gpu), onednn (oneDNN dense layers; CPU) or a list: eager,compile. [default: bench.toml run.torch_modes]")]
SetFlag = Annotated[Optional[list[str]], typer.Option("--set", help="Set a spec field for every variant, e.g. --set left_context=32,64 (repeatable; comma lists make a grid of cells, each variant measured in each). [default: bench.toml [run.set]]")]
PrecisionFlag = Annotated[Optional[str], typer.Option("--precision", help="float32 matmul precision in every framework: highest, high or default (see README). [default: bench.toml run.precision]")]
DtypeFlag = Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16 (what accelerators serve in) or int8 (ONNX Runtime's dynamic quantisation of the MatMul weights). [default: bench.toml run.dtype]")]
ConfigFlag = Annotated[Optional[Path], typer.Option("--config", help="Config file. [default: ./bench.toml if present]")]
QuickFlag = Annotated[bool, typer.Option("--quick", help="Few repetitions (bench.toml [measure.quick]): smoke runs and CI.")]
ProgressFlag = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")]
ThreadsFlag = Annotated[Optional[str], typer.Option("--threads", help="Threads each worker computes with: auto (every usable core, one fewer per core other processes keep busy when the run starts) or a number. [default: bench.toml run.threads]")]
PluginFlag = Annotated[Optional[list[str]], typer.Option("--plugin", help="A module name or .py file that registers variants with @variants.register; repeatable. [default: bench.toml run.plugins]")]


class UsageProblem(Exception):
    """Bad input found by a verb itself; str() is the one line shown to the user."""


class _OneLineErrors(TyperGroup):
    """Typer's usage errors as one line on stderr (`bench: error: ...`) instead of a boxed help text."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except typer.TyperException as e:  # every usage error of typer's (vendored) click derives from it
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError":  # plain `bench`: the help, as a user expects
                typer.echo(ctx.get_help())
                rv = 0
            else:
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                typer.echo(f"bench: error: {' '.join(e.format_message().split())}{hint}", err=True)
                rv = e.exit_code
        except typer.Abort:
            typer.echo("bench: aborted", err=True)
            rv = EXIT_FAILED
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="bench",
    help="Benchmark streaming speech encoders (the Practical Conformer ladder) in JAX, PyTorch and ONNX Runtime.\n\n"
    "Typical use: 'bench run' (the whole ladder on CPU, every framework, batches from bench.toml), then "
    "'bench report DIR' and 'bench plot DIR' on the folder it prints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """Errors whose message is a complete one-line answer to bad input (imported only when one is raised)."""
    from bench.machine import DeviceUnavailableError
    from bench.results import ResultsError
    from bench.ab import RevisionError
    from variants import PluginError, UnknownVariantError
    from variants.spec import SpecOverrideError
    from bench.cluster import RayUnavailableError

    return (UsageProblem, ConfigError, FlagError, ResultsError, DeviceUnavailableError, UnknownVariantError,
            PluginError, RevisionError, SpecOverrideError, RayUnavailableError)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Known bad-input errors from any layer, and a file or folder that cannot be read or written,
    become one line on stderr and exit 2."""
    try:
        yield
    except BrokenPipeError:  # stdout's reader went away (`bench list | head`): click ends quietly, exit 1
        raise
    except OSError as e:
        _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except Exception as e:
        if isinstance(e, _bad_input_errors()):
            _fail(str(e))
        raise


@contextlib.contextmanager
def _stopped_runs(writer, out_dir: Path) -> Iterator[None]:
    """Ctrl-C (exit 130) or SIGTERM (exit 143, e.g. a CI time limit) during a run: one line saying how
    many records its folder kept, never a traceback."""
    from bench import runner

    try:
        with runner.sigterm_interrupts():
            yield
    except runner.Terminated as e:
        _fail(f"{e}; {len(writer.records)} records kept in {out_dir}", code=143)
    except KeyboardInterrupt:
        _fail(f"interrupted; {len(writer.records)} records kept in {out_dir}", code=130)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"bench: error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(code)


# ---- verbs ----------------------------------------------------------------------------------------


@app.command("list")
def list_variants(
    pattern: Annotated[str, typer.Argument(help="Which variants: all, NAME[,NAME] or a glob such as 'perf*'.")] = "all",
    plugin: PluginFlag = None,
) -> None:
    """List the registered variants in ladder order: name, parameters, description.

    \b
    Examples:
      bench list
      bench list 'practical*'
      bench list --plugin my_variants.py
    """
    with _user_errors():
        import variants

        from bench.config import plugin_refs
        from variants import analytic

        variants.load_plugins((*load_config(None).run.plugins, *plugin_refs(tuple(plugin or ()))))

        selected = variants.select(pattern)
        width = max(len(n) for n in selected)
        for name in selected:
            variant = variants.get(name)
            params = f"{analytic.param_count(variant.spec) / 1e6:7.1f}M"
            typer.echo(f"{name:<{width}}  {params}  {variant.description}")


@app.command("run")
def run_cmd(
    variant: VariantFlag = None,
    device: DeviceFlag = None,
    framework: FrameworkFlag = None,
    batch: BatchFlag = None,
    chunk: ChunkFlag = None,
    torch_modes: TorchModeFlag = None,
    dtype: DtypeFlag = None,
    precision: PrecisionFlag = None,
    config: ConfigFlag = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create. [default: reports/runs/<UTC time>-<device>/]")] = None,
    quick: QuickFlag = False,
    machine_tag: Annotated[Optional[str], typer.Option("--machine-tag", envvar="BENCH_MACHINE_TAG", help="Name of this machine; absolute latency budgets apply only to runs with their tag.")] = None,
    progress: ProgressFlag = True,
    plugin: PluginFlag = None,
    spec_set: SetFlag = None,
    threads: ThreadsFlag = None,
    profile: Annotated[bool, typer.Option("--profile", help="After timing, split each step's time into op classes with the framework's profiler (see 'bench profile').")] = False,
) -> None:
    """Measure variants x frameworks x batches on one device and write a run folder.

    Each variant is measured in its own worker process; the variants compared with one another are
    timed in interleaved rounds, and every speedup carries a 95% interval. Records are on disk as soon
    as their group is measured (results.json, results.csv, table.md, raw_times.json), so a run stopped
    by Ctrl-C (exit 130) or SIGTERM (exit 143) keeps what it measured. A measurement that fails, crashes its worker or hangs past the timeout
    is recorded with its cause, the run goes on, and the exit status is 1.

    \b
    Examples:
      bench run                                   # the whole ladder, as bench.toml says
      bench run --quick                           # a smoke run (few repetitions)
      bench run --variant practical,baseline --framework jax --batch 1
      bench run --variant 'conv*' --device gpu --out reports/runs/gpu-test
      bench run --device tpu --framework jax --dtype bfloat16
      bench run --variant baseline,practical --set left_context=32,64,128 --batch 64
    """
    with _user_errors():
        cfg = load_config(config)
        run = apply_flags(cfg, variant=variant, framework=framework, batch=batch, chunk=chunk, torch_mode=torch_modes,
                          dtype=dtype, precision=precision, device=device, out=out, machine_tag=machine_tag,
                          plugins=tuple(plugin or ()), spec_set=tuple(spec_set or ()), threads=threads)
        settings = cfg.measure_for(quick)
        if profile or settings.profile:  # each class is shown beside its roofline bound: measure the peaks
            settings = replace(settings, profile=True, roofline=True)
    _execute(cfg, run, settings, quick, progress, framework_named=framework is not None)


def _execute(cfg, run, settings, quick: bool, progress: bool, framework_named: bool, executor=None) -> None:
    """Measure `run` into its folder and print what it found (`bench run`, `bench profile`, `bench sweep`):
    the table, the breakdown when profiled, the sweep's map when it has cells; exit 1 if any failed."""
    from bench import machine, report, results, runner

    with _user_errors():
        run = _runnable(run, framework_named=framework_named)
        out_dir = Path(run.out_dir)
        plan = replace(runner.RunPlan.from_config(run), device_name=machine.run_device_name(run.device, run.frameworks))
        _check_memory(plan)
        meta = runner.run_metadata(cfg.as_used(run, quick, settings), machine_tag=run.machine_tag)
        writer = results.RunWriter(out_dir, meta, table_md=report.run_table_markdown)
    typer.echo(f"bench: {len(plan.jobs())} measurements -> {out_dir}", err=True)
    with _stopped_runs(writer, out_dir), _user_errors():
        summary = (executor or runner.run)(plan, settings, writer, progress=progress)
    typer.echo((out_dir / results.TABLE_MD).read_text(encoding="utf-8"))
    df = results.frame(summary.records)
    for extra in (report.render_profile(df) if settings.profile else "", report.render_sweep(df)):
        if extra:
            typer.echo(extra)
    typer.echo(f"{len(summary.records)} records in {out_dir} ({summary.elapsed_s:.0f} s)")
    for line in (summary.threads_line(), summary.noise_line(), summary.speed_line()):
        if line:
            typer.echo(line)
    if summary.failed:
        _fail(summary.failure_line(), code=EXIT_FAILED)


def _check_memory(plan) -> None:
    """Refuse, before anything starts, a plan whose workers would not fit in memory together."""
    from bench import machine, runner

    need, group = runner.peak_memory_bytes(plan)
    have = machine.available_memory_bytes()
    if have is not None and need > have:
        job = group[0]
        raise UsageProblem(
            f"this run needs about {need / 2**30:.1f} GiB at once ({len(group)} workers of {job.framework} batch "
            f"{job.batch}, each holding its model and state), and {have / 2**30:.1f} GiB is available; "
            f"measure fewer variants, cells or batches at a time")


def _settings_here(run, frameworks: tuple[str, ...], named: bool):
    """The run without what cannot run in its settings, and a line for each thing left out: a quantised
    dtype runs in ONNX Runtime only (a framework the user named that cannot is an error), and a mode that
    runs on one device only (schema.ONE_DEVICE_MODES: torch "cudagraphs" on a GPU, "onednn" on the CPU)
    is skipped elsewhere."""
    from bench.schema import ONE_DEVICE_MODES, QUANTIZED_FRAMEWORKS
    from variants.build import QUANTIZED_DTYPES

    lines = []
    if run.dtype in QUANTIZED_DTYPES:
        cannot = [fw for fw in frameworks if fw not in QUANTIZED_FRAMEWORKS]
        if cannot and named or len(cannot) == len(frameworks):
            raise UsageProblem(f"--dtype {run.dtype}: quantised weights run in {', '.join(QUANTIZED_FRAMEWORKS)} "
                               f"only, not {', '.join(cannot)}; use --framework {QUANTIZED_FRAMEWORKS[0]}")
        lines += [f"skipping {fw}: --dtype {run.dtype} runs in {', '.join(QUANTIZED_FRAMEWORKS)} only" for fw in cannot]
        frameworks = tuple(fw for fw in frameworks if fw not in cannot)
    torch_modes = run.torch_modes
    if "torch" in frameworks:
        elsewhere = {m: ONE_DEVICE_MODES[("torch", m)][1] for m in run.torch_modes
                     if ONE_DEVICE_MODES.get(("torch", m), (run.device,))[0] != run.device}
        torch_modes = tuple(m for m in run.torch_modes if m not in elsewhere)
        lines += [f"skipping torch/{m} on {run.device}: {why}" for m, why in elsewhere.items()]
        if not torch_modes:
            frameworks = tuple(fw for fw in frameworks if fw != "torch")
            torch_modes = run.torch_modes
    if not frameworks:
        raise UsageProblem(f"nothing to measure on {run.device} in {run.dtype}: " + "; ".join(lines))
    return replace(run, frameworks=frameworks, torch_modes=torch_modes), lines


def _runnable(run, framework_named: bool):
    """The run with only the frameworks that can use its device, and the folder checked to hold no run.

    A framework the user named (`--framework`) that cannot use the device, or a device that no
    framework has, is an error (exit 2); a default framework that cannot is left out with one line."""
    from bench import machine, results

    if (Path(run.out_dir) / results.RESULTS_JSON).exists():  # checked first: asking the frameworks takes seconds
        raise UsageProblem(f"--out {run.out_dir} already holds a run; choose another folder")
    frameworks, skipped = machine.frameworks_on(run.device, run.frameworks, named=framework_named)
    run, left_out = _settings_here(run, frameworks, framework_named)
    for line in (*skipped, *left_out):
        typer.echo(f"bench: {line}", err=True)
    if "onnxruntime" in run.frameworks:  # read by every worker that exports: a bad value fails here, once
        from variants.build import onnx_cache_limit_bytes

        try:
            onnx_cache_limit_bytes()
        except ValueError as e:
            raise UsageProblem(str(e)) from None
    return run


@app.command("profile")
def profile_cmd(
    variant: VariantFlag = None,
    device: DeviceFlag = None,
    framework: FrameworkFlag = None,
    batch: BatchFlag = None,
    dtype: DtypeFlag = None,
    precision: PrecisionFlag = None,
    config: ConfigFlag = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create. [default: reports/runs/<UTC time>-<device>/]")] = None,
    progress: ProgressFlag = True,
    plugin: PluginFlag = None,
    spec_set: SetFlag = None,
) -> None:
    """Where a step's time goes: a quick run that then profiles each step with the framework's own
    profiler (XLA's, torch.profiler) and splits it into op classes (FFN, attention projections,
    attention state, conv, norms and elementwise, time reduction, and the framework's time outside
    ops), each beside its own roofline bound. The run folder keeps every op in profiles/.

    \b
    Examples:
      bench profile --variant baseline,practical --batch 1,64
      bench profile --variant practical --framework torch --batch 64
      bench plot reports/runs/<folder>            # includes the stacked bars of the breakdown
    """
    run_cmd(variant=variant, device=device, framework=framework, batch=batch, chunk=None, torch_modes=None,
            dtype=dtype, precision=precision, config=config, out=out, quick=True, machine_tag=None,
            progress=progress, plugin=plugin, spec_set=spec_set, profile=True)


@app.command("sweep")
def sweep_cmd(
    config: ConfigFlag = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create. [default: reports/runs/<UTC time>-sweep-<device>/]")] = None,
    progress: ProgressFlag = True,
    ray: Annotated[bool, typer.Option("--ray", help="Run each group of cells as a Ray task, each holding a whole node (pip install -e '.[ray]').")] = False,
    address: Annotated[Optional[str], typer.Option("--address", help="With --ray: the cluster to join, e.g. auto or ray://head:10001. [default: a new local Ray]")] = None,
) -> None:
    """Measure the grid of bench.toml [sweep]: variants x [sweep.set] cells x batches (x frameworks),
    the cells of one framework and batch timed in the same interleaved rounds, and print the speedup
    map: practical over baseline per cell and batch, measured here and predicted on named accelerators
    by the roofline. `bench plot` on the folder draws it.

    \b
    Examples:
      bench sweep                                   # the default grid (about 7 minutes on 2 cores)
      bench sweep --config my-sweep.toml --out reports/sweep
      bench sweep --ray --address auto              # one Ray task per group, on an existing cluster
    """
    with _user_errors():
        cfg = load_config(config)
        run = apply_flags(replace(cfg, run=cfg.sweep), out=out)  # [sweep] as the run, its cells expanded
        if out is None:
            run = _renamed_out(run, "sweep")
        executor = None
        if ray:
            import functools
            import importlib.util

            from bench import cluster

            if importlib.util.find_spec("ray") is None:
                raise UsageProblem(cluster.INSTALL_HINT)
            executor = functools.partial(cluster.run, address=address)
        elif address is not None:
            raise UsageProblem("--address needs --ray")
    # the map sets each measured speedup beside the roofline's: measure this machine's peaks
    settings = replace(cfg.measure_for(cfg.sweep_quick), roofline=True)
    _execute(cfg, run, settings, cfg.sweep_quick, progress, framework_named=False, executor=executor)


def _renamed_out(run, kind: str):
    """The default run folder <UTC time>-<device> as <UTC time>-<kind>-<device> (ab, sweep)."""
    name = Path(run.out_dir).name
    return replace(run, out_dir=str(Path(run.out_dir).with_name(name.replace(f"-{run.device}", f"-{kind}-{run.device}"))))


@app.command("ab")
def ab_cmd(
    base: Annotated[str, typer.Argument(help="The git revision to compare against, e.g. HEAD~1, main, a commit.")],
    head: Annotated[Optional[str], typer.Argument(help="The revision to judge. [default: the working tree, changes included]")] = None,
    variant: VariantFlag = None,
    device: DeviceFlag = None,
    framework: FrameworkFlag = None,
    batch: BatchFlag = None,
    chunk: ChunkFlag = None,
    torch_modes: TorchModeFlag = None,
    dtype: DtypeFlag = None,
    precision: PrecisionFlag = None,
    config: ConfigFlag = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create. [default: reports/runs/<UTC time>-ab-<device>/]")] = None,
    quick: QuickFlag = False,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Slowdown that fails, as a fraction (0.1 = 10%). [default: bench.toml ab.threshold]")] = None,
    progress: ProgressFlag = True,
    plugin: PluginFlag = None,
    spec_set: SetFlag = None,
    threads: ThreadsFlag = None,
) -> None:
    """Compare the variant code of two git revisions on this machine, in one interleaved run.

    Each revision's workers import its own variants/ (BASE from a temporary git worktree); both are
    timed in the same rounds, so drift of the machine cancels out of the change. Per row it prints the
    change in p50 with its 95% interval. Exit 1 when a row is slower by more than the threshold and
    its interval excludes no change (asv continuous' rule), or could not be measured; 0 otherwise;
    2 for bad input. Slowdowns declared in bench.toml [[ab.accept]] are reported as accepted.

    \b
    Examples:
      bench ab HEAD~1                         # the working tree against the last commit
      bench ab main HEAD --quick              # CI: this commit against main
      bench ab v1.0 --variant practical --framework jax --batch 1 --threshold 0.05
    """
    from bench import ab, machine, report, results, runner

    with _user_errors():
        if threshold is not None and not 0 < threshold < 10:
            raise UsageProblem(f"--threshold {threshold}: give a fraction such as 0.1 (10%)")
        cfg = load_config(config)
        repo = ab.repo_root(Path.cwd())
        base_commit = ab.resolve_revision(repo, base)
        head_commit = ab.resolve_revision(repo, head) if head is not None else None
        run = apply_flags(cfg, variant=variant, framework=framework, batch=batch, chunk=chunk, torch_mode=torch_modes,
                          dtype=dtype, precision=precision, device=device, out=out, plugins=tuple(plugin or ()),
                          spec_set=tuple(spec_set or ()), threads=threads)
        if out is None:
            run = _renamed_out(run, "ab")
        if run.device in machine.EXCLUSIVE_DEVICES:
            raise UsageProblem(f"bench ab times two revisions in two processes at once, and a {run.device} opens in one "
                               f"process at a time; run `bench run` on each revision and `bench compare` the folders")
        run = _runnable(run, framework_named=framework is not None)
        out_dir = Path(run.out_dir)
        limit = threshold if threshold is not None else cfg.ab.threshold
    head_label = head_commit[:12] if head_commit else "working tree"
    with contextlib.ExitStack() as stack, _user_errors():
        base_root = stack.enter_context(ab.checkout(repo, base_commit))
        head_root = stack.enter_context(ab.checkout(repo, head_commit)) if head_commit else repo
        sides = tuple(runner.Side(name, str(root), ab.side_plugins(run.plugins, repo, root))
                      for name, root in (("base", base_root), ("head", head_root)))
        plan = replace(runner.RunPlan.from_config(run, sides=sides),
                       device_name=machine.run_device_name(run.device, run.frameworks))
        _check_memory(plan)
        meta = runner.run_metadata(cfg.as_used(run, quick), machine_tag=run.machine_tag)
        meta["ab"] = {"base": base_commit, "head": head_commit or "working tree", "threshold": limit}
        writer = results.RunWriter(out_dir, meta, table_md=report.run_table_markdown)
        typer.echo(f"bench ab: {head_label} vs {base_commit[:12]}, {len(plan.jobs())} measurements -> {out_dir}",
                   err=True)
        with _stopped_runs(writer, out_dir):
            summary = runner.run(plan, cfg.measure_for(quick), writer, progress=progress)
        if line := summary.threads_line():
            typer.echo(line, err=True)
        changes = ab.compare(writer.records, results.load_raw_rounds(out_dir), limit, cfg.ab.accept)
    typer.echo(ab.render(changes, base_commit[:12], head_label, limit))
    code = ab.exit_code(changes)
    if code:
        flagged = [f"{c.variant} {c.framework}/{c.mode} b={c.batch}" for c in changes if c.verdict in ("slower", "failed")]
        _fail(f"{len(flagged)} rows slower than {base_commit[:12]} by more than {limit:.0%} (or failed): "
              f"{', '.join(flagged)}", code=EXIT_FAILED)


@app.command("report")
def report_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run folders; they merge into one table.")],
    fmt: Annotated[str, typer.Option("--format", help="markdown, csv or latex.")] = "markdown",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the table to this file instead of stdout.")] = None,
) -> None:
    """Print the paper-style table (ladder rows; params, GFLOPs, state, p50/p90, speedup).

    Several folders (e.g. one from a TPU host, one from a CPU host) merge into one table with the
    device as a column.

    \b
    Examples:
      bench report reports/runs/20250101T120000Z-cpu
      bench report runs/cpu-host runs/tpu-host --format latex -o table.tex
    """
    if fmt not in ("markdown", "csv", "latex"):
        _fail(f"--format {fmt!r} is not one of markdown, csv, latex")
    with _user_errors():
        from bench import report
        from bench.results import load_runs

        metas, df = load_runs(run_dirs)
        _note_unfinished(metas, run_dirs)
        text = report.render_table(df, fmt)
        if fmt == "markdown" and (predictions := report.render_predictions(df)):
            text += "\n" + predictions
        for extra in (report.render_profile(df), report.render_sweep(df)) if fmt == "markdown" else ():
            if extra:
                text += "\n" + extra
    _emit(text, out)


@app.command("plot")
def plot_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folder(s); several merge into one set of plots.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the PNG/SVG files. [default: FIRST_DIR/plots]")] = None,
) -> None:
    """Draw the paper-style plots (latency, speedup, state vs left context, batch, Pareto, roofline).

    \b
    Examples:
      bench plot reports/runs/20250101T120000Z-cpu
      bench plot runs/cpu-host runs/tpu-host --out figures/
    """
    with _user_errors():
        from bench import plots
        from bench.results import load_runs

        metas, df = load_runs(run_dirs)
        _note_unfinished(metas, run_dirs)
        out_dir = out if out is not None else Path(run_dirs[0]) / "plots"
        paths = plots.plot_all(df, out_dir)
    for path in paths:
        typer.echo(str(path))


@app.command("compare")
def compare_cmd(
    run_a: Annotated[Path, typer.Argument(help="The reference run folder (A).")],
    run_b: Annotated[Path, typer.Argument(help="The run to judge (B).")],
    fmt: Annotated[str, typer.Option("--format", help="markdown, csv or latex.")] = "markdown",
) -> None:
    """Per-row ratio B/A with a significance mark (Mann-Whitney U on raw step times, as asv).

    '+' marks a row that got significantly slower in B, '-' faster, '~' no significant change.

    \b
    Examples:
      bench compare reports/runs/before reports/runs/after
    """
    if fmt not in ("markdown", "csv", "latex"):
        _fail(f"--format {fmt!r} is not one of markdown, csv, latex")
    with _user_errors():
        from bench import compare
        from bench.results import load_raw_times, load_run

        meta_a, df_a = load_run(run_a)
        meta_b, df_b = load_run(run_b)
        _note_unfinished([meta_a, meta_b], [run_a, run_b])
        if note := compare.machine_note(meta_a, meta_b):
            typer.echo(f"bench: note: {note}", err=True)
        table = compare.compare_runs(df_a, load_raw_times(run_a), df_b, load_raw_times(run_b))
        text = compare.render_comparison(table, fmt)
    typer.echo(text)


@app.command("env")
def env_cmd() -> None:
    """Show Python, framework versions, the devices each framework sees, thread settings and the caches.

    \b
    Examples:
      bench env
    """
    from bench import machine

    env = machine.environment()
    typer.echo(f"python     {env['machine']['python']} on {env['machine']['platform']}")
    typer.echo(f"cpu        {env['machine']['cpu_name']} ({env['machine']['usable_cores']} usable of {env['machine']['cpu_count']} cores)")
    typer.echo(f"cpu id     {env['machine']['cpu_id'] or 'unknown (no /proc/cpuinfo)'}")
    typer.echo(f"simd       {env['machine']['cpu_features'] or 'unknown (no /proc/cpuinfo)'}")
    for name, version in env["versions"].items():
        typer.echo(f"{name:<10} {version or 'not installed'}")
    for framework, kinds in machine.available_devices().items():
        typer.echo(f"devices    {framework}: {', '.join(kinds) or 'none'}")
    threads = ", ".join(f"{fw} {machine.framework_threads(fw)}" for fw in ("torch", "jax"))
    variables = [f"{k}={v}" for k, v in env["threads"].items() if k in machine.THREAD_ENV_VARS and v is not None]
    typer.echo(f"threads    {threads}" + (f" ({'; '.join(variables)})" if variables else ""))
    git = machine.git_info()
    typer.echo(f"git        {git['commit'] or 'no commit'}{' (dirty)' if git['dirty'] else ''}")
    for line in _cache_lines():
        typer.echo(f"cache      {line}")


def _cache_lines() -> list[str]:
    """Where ONNX exports and XLA programs are kept between runs, how much they hold and their bounds."""
    from bench.adapters.jax_adapter import (TRACE_CACHE_MAX_BYTES, TRACE_FOLDER, XLA_CACHE_ENV, XLA_CACHE_MAX_BYTES,
                                            compile_cache_folder)
    from variants.build import ONNX_CACHE_LIMIT_ENV, onnx_cache_dir, onnx_cache_limit_bytes

    def held(folder: Path) -> str:
        files = [f for f in folder.rglob("*") if f.is_file()] if folder.is_dir() else []
        return f"{sum(f.stat().st_size for f in files) / 1e9:.2f} GB in {len(files)} files"

    try:
        bound = onnx_cache_limit_bytes()
        onnx_bound = f"{'no bound' if bound == float('inf') else f'bound {bound / 1e9:g} GB'}, {ONNX_CACHE_LIMIT_ENV}"
    except ValueError as e:
        onnx_bound = str(e)
    onnx = onnx_cache_dir()
    lines = [f"onnx: {onnx}, {held(onnx)} ({onnx_bound})"]
    xla = compile_cache_folder()
    lines.append(f"xla: {xla}, {held(xla)} (bound {XLA_CACHE_MAX_BYTES / 2**30:g} GiB, and "
                 f"{TRACE_CACHE_MAX_BYTES / 2**30:g} GiB for the steps' traces in {TRACE_FOLDER}/)" if xla
                 else f"xla: off ({XLA_CACHE_ENV})")
    return lines


@app.command("check")
def check_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The run folder to check.")],
    budgets: Annotated[Path, typer.Option("--budgets", help="File with the [budgets] tables.")] = Path("bench.toml"),
) -> None:
    """Check a run against the budgets in bench.toml; exit 0 all pass, 1 any fails, 2 a bad budget file.

    Ratio budgets compare variants measured in the same run (they hold on any machine of the device
    class); a latency ratio fails only when its whole 95% interval is past the limit, and is
    INCONCLUSIVE (not a failure) when the interval straddles it. Deterministic
    budgets (params, MACs, state bytes) are exact. Absolute p90 budgets apply only to runs whose
    machine tag matches theirs.

    \b
    Examples:
      bench run --quick --out /tmp/run && bench check /tmp/run
      bench check reports/runs/20250101T120000Z-cpu --budgets ci/bench.toml
    """
    with _user_errors():
        from bench import budgets as budgets_mod
        from bench.results import load_raw_rounds, load_run

        specs = budgets_mod.load_budgets(budgets)
        meta, df = load_run(run_dir)
        _note_unfinished([meta], [run_dir])
        checks = budgets_mod.evaluate(specs, meta, df, load_raw_rounds(run_dir))
    typer.echo(budgets_mod.render_checks(checks))
    failed = [c for c in checks if c.status == "FAIL"]
    if failed:
        _fail(budgets_mod.failure_line(failed), code=EXIT_FAILED)


def _note_unfinished(metas, run_dirs) -> None:
    """A note on stderr for each folder whose run stopped before the end (the output itself is unchanged)."""
    from bench.results import unfinished_note

    for meta, run_dir in zip(metas, run_dirs):
        if note := unfinished_note(meta, run_dir):
            typer.echo(f"bench: note: {note}", err=True)


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text)
        return
    from bench.results import atomic_write_text

    atomic_write_text(out, text)
    typer.echo(str(out), err=True)


if __name__ == "__main__":  # python -m bench.cli
    app()
