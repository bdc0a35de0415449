"""The `bench` command: list variants, run the study, report/plot/compare result folders, check budgets.

Framework imports (jax, torch) and pandas happen inside the verbs that need them, so `bench --help`
and `bench list` start instantly. Bad input exits 2 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from typer.core import TyperGroup

from bench.config import DEVICES, FRAMEWORKS, TORCH_MODES, ConfigError, load_config

EXIT_FAILED = 1  # the run finished but some measurement (or budget) failed
EXIT_USAGE = 2  # bad flags, a malformed bench.toml, a device that is not here


class UsageProblem(Exception):
    """Bad input found by a verb itself; str() is the one line shown to the user."""


def _click_exceptions():
    """Click's exception module: vendored inside typer since 0.20-ish, the click package before."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


class _OneLineErrors(TyperGroup):
    """Click's usage errors as one line on stderr (`bench: error: ...`) instead of a boxed help text."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        exceptions = _click_exceptions()
        no_args_is_help = getattr(exceptions, "NoArgsIsHelpError", ())
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except no_args_is_help as e:  # plain `bench`: the help, as a user expects
            typer.echo(e.ctx.get_help())
            rv = 0
        except exceptions.ClickException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"bench: error: {' '.join(e.format_message().split())}{hint}", err=True)
            rv = e.exit_code
        except (typer.Abort, exceptions.Abort):
            typer.echo("bench: aborted", err=True)
            rv = EXIT_FAILED
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="bench",
    help="Benchmark streaming speech encoders (the Practical Conformer ladder) in JAX and PyTorch.\n\n"
    "Typical use: 'bench run' (the whole ladder on CPU, both frameworks, batches from bench.toml), then "
    "'bench report DIR' and 'bench plot DIR' on the folder it prints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """Errors whose message is a complete one-line answer to bad input (imported only when one is raised)."""
    from bench.devices import DeviceUnavailableError
    from bench.results import ResultsError
    from variants import UnknownVariantError

    return UsageProblem, ConfigError, ResultsError, DeviceUnavailableError, UnknownVariantError


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Known bad-input errors from any layer become one line on stderr and exit 2."""
    try:
        yield
    except Exception as e:
        if isinstance(e, _bad_input_errors()):
            _fail(str(e))
        raise


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"bench: error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(code)


# ---- parsing helpers ------------------------------------------------------------------------------


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,64' -> (1, 64); every entry a positive integer."""
    batches = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise UsageProblem(f"--batch {text!r}: {part!r} is not an integer (e.g. --batch 1,64)") from None
        if value < 1:
            raise UsageProblem(f"--batch {text!r}: batch sizes must be >= 1, got {value}")
        batches.append(value)
    return tuple(dict.fromkeys(batches))


def parse_frameworks(text: str) -> tuple[str, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["all"]:
        return FRAMEWORKS
    for part in parts:
        if part not in FRAMEWORKS:
            raise UsageProblem(f"--framework {text!r}: {part!r} is not one of {', '.join(FRAMEWORKS)}, all")
    if not parts:
        raise UsageProblem("--framework is empty; use jax, torch or all")
    return tuple(dict.fromkeys(parts))


def _check_chunk(chunk: int, variant_names: list[str]) -> None:
    """A step must complete whole output frames for every variant: chunk a multiple of each output stride."""
    import variants

    if chunk < 1:
        raise UsageProblem(f"--chunk must be a positive number of 10 ms input frames, got {chunk}")
    strides = {name: variants.get(name).spec.output_stride for name in variant_names}
    bad = {name: s for name, s in strides.items() if chunk % s}
    if bad:
        need = math.lcm(*strides.values())
        name, stride = next(iter(bad.items()))
        raise UsageProblem(
            f"--chunk {chunk} does not complete whole frames for {name} (needs a multiple of {stride} input frames); "
            f"use a multiple of {need} for this selection, e.g. --chunk {need}"
        )


def _check_device(device: str, frameworks: tuple[str, ...]) -> None:
    from bench.devices import available_devices

    if device not in DEVICES:
        raise UsageProblem(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    available = available_devices(frameworks)
    missing = [fw for fw in frameworks if device not in available.get(fw, [])]
    if missing:
        here = "; ".join(f"{fw}: {', '.join(kinds) or 'none'}" for fw, kinds in available.items())
        raise UsageProblem(f"device {device!r} is not available to {', '.join(missing)} on this machine; available: {here}")


def _default_out(base: str, device: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(base) / f"{stamp}-{device}"


# ---- verbs ----------------------------------------------------------------------------------------


@app.command("list")
def list_variants(
    pattern: Annotated[str, typer.Argument(help="Which variants: all, NAME[,NAME] or a glob such as 'perf*'.")] = "all",
) -> None:
    """List the registered variants in ladder order: name, parameters, description.

    \b
    Examples:
      bench list
      bench list 'practical*'
    """
    with _user_errors():
        import variants

        selected = variants.select(pattern)
        try:
            from variants import analytic
        except ImportError:  # counting needs only the spec, but list must work without it
            analytic = None
        width = max(len(n) for n in selected)
        for name in selected:
            variant = variants.get(name)
            params = f"{analytic.param_count(variant.spec) / 1e6:7.1f}M" if analytic else "       ?"
            typer.echo(f"{name:<{width}}  {params}  {variant.description}")


@app.command("run")
def run_cmd(
    variant: Annotated[Optional[str], typer.Option("--variant", "-v", help="all, NAME[,NAME] or a glob ('perf*'). [default: bench.toml run.variants]")] = None,
    device: Annotated[Optional[str], typer.Option("--device", "-d", help="cpu, gpu or tpu. [default: bench.toml run.device]")] = None,
    framework: Annotated[Optional[str], typer.Option("--framework", "-f", help="jax, torch or all. [default: bench.toml run.frameworks]")] = None,
    batch: Annotated[Optional[str], typer.Option("--batch", "-b", help="Comma-separated batch sizes, e.g. 1,64. [default: bench.toml run.batches]")] = None,
    chunk: Annotated[Optional[int], typer.Option("--chunk", "-c", help="Input frames (10 ms) per streaming step. [default: bench.toml run.chunk_frames]")] = None,
    torch_modes: Annotated[Optional[str], typer.Option("--torch-mode", help="eager, compile or eager,compile. [default: bench.toml run.torch_modes]")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32 or bfloat16 (what accelerators serve in). [default: bench.toml run.dtype]")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Config file. [default: ./bench.toml if present]")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create. [default: reports/runs/<UTC time>-<device>/]")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Few repetitions (bench.toml [measure.quick]): smoke runs and CI.")] = False,
    machine_tag: Annotated[Optional[str], typer.Option("--machine-tag", envvar="BENCH_MACHINE_TAG", help="Name of this machine; absolute latency budgets apply only to runs with their tag.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
) -> None:
    """Measure variants x frameworks x batches on one device and write a run folder.

    Every record is on disk as soon as it is measured (results.json, results.csv, table.md,
    raw_times.json), so an interrupted run keeps what it measured. A failed measurement is recorded
    with its error, the run goes on, and the exit status is 1.

    \b
    Examples:
      bench run                                   # the whole ladder, as bench.toml says
      bench run --quick                           # a smoke run (few repetitions)
      bench run --variant practical,baseline --framework jax --batch 1
      bench run --variant 'conv*' --device gpu --out reports/runs/gpu-test
      bench run --device tpu --framework jax --dtype bfloat16
    """
    from bench import results, runner

    with _user_errors():
        cfg = load_config(config)
        run_cfg = cfg.run
        import variants

        variant_names = variants.select(variant if variant is not None else run_cfg.variants)
        frameworks = parse_frameworks(framework) if framework is not None else run_cfg.frameworks
        batches = parse_batches(batch) if batch is not None else run_cfg.batches
        chunk_frames = chunk if chunk is not None else run_cfg.chunk_frames
        _check_chunk(chunk_frames, variant_names)
        if torch_modes is not None:
            modes = tuple(m.strip() for m in torch_modes.split(",") if m.strip())
            if not modes or any(m not in TORCH_MODES for m in modes):
                raise UsageProblem(f"--torch-mode {torch_modes!r}: choose from {', '.join(TORCH_MODES)}")
            run_cfg = replace(run_cfg, torch_modes=modes)
        if dtype is not None:
            if dtype not in ("float32", "bfloat16"):
                raise UsageProblem(f"--dtype {dtype!r}: choose from float32, bfloat16")
            run_cfg = replace(run_cfg, dtype=dtype)
        device = device if device is not None else run_cfg.device
        _check_device(device, frameworks)
        out_dir = out if out is not None else _default_out(run_cfg.out_dir, device)
        if (out_dir / results.RESULTS_JSON).exists():
            raise UsageProblem(f"--out {out_dir} already holds a run; choose another folder")

        plan = runner.RunPlan(
            variants=tuple(variant_names), frameworks=frameworks,
            modes={fw: run_cfg.modes(fw) for fw in frameworks}, device=device, batches=batches,
            chunk_frames=chunk_frames, dtype=run_cfg.dtype,
        )
        tag = machine_tag or run_cfg.machine_tag
        # The config as this run used it: flags folded into [run], and which [measure] preset applied.
        effective = cfg.to_dict()
        effective["run"].update(variants=",".join(variant_names), frameworks=list(frameworks), device=device,
                                batches=list(batches), chunk_frames=chunk_frames, torch_modes=list(run_cfg.torch_modes),
                                dtype=run_cfg.dtype,
                                out_dir=str(out_dir), machine_tag=tag)
        effective["quick_run"] = quick
        effective["measure_used"] = effective["quick" if quick else "measure"]
        measure_fn, settings_cls = runner.load_measure()
        settings = runner.make_settings(settings_cls, cfg.measure_for(quick))

    writer = results.RunWriter(out_dir, results.run_metadata(effective, machine_tag=tag))
    typer.echo(f"bench: {len(plan.jobs())} measurements -> {out_dir}", err=True)
    try:
        with _user_errors():
            summary = runner.run(plan, settings, writer, measure_fn=measure_fn, progress=progress)
    except KeyboardInterrupt:
        _fail(f"interrupted; {len(writer.records)} records kept in {out_dir}", code=130)
    typer.echo((out_dir / results.TABLE_MD).read_text(encoding="utf-8"))
    typer.echo(f"{len(summary.records)} records in {out_dir} ({summary.elapsed_s:.0f} s)")
    if summary.failed:
        _fail(summary.failure_line(), code=EXIT_FAILED)


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

        _, df = load_runs(run_dirs)
        text = report.render_table(df, fmt)
        if fmt == "markdown" and (predictions := report.render_predictions(df)):
            text += "\n" + predictions
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
        out_dir = out if out is not None else Path(run_dirs[0]) / "plots"
        paths = plots.plot_all(df, out_dir, meta=metas)  # the metadata carries the machine's roofline
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
        from bench import report
        from bench.results import load_raw_times, load_run

        _, df_a = load_run(run_a)
        _, df_b = load_run(run_b)
        table = report.compare_runs(df_a, load_raw_times(run_a), df_b, load_raw_times(run_b))
        text = report.render_comparison(table, fmt)
    typer.echo(text)


@app.command("env")
def env_cmd() -> None:
    """Show Python, framework versions, the devices each framework sees, and thread settings.

    \b
    Examples:
      bench env
    """
    from bench import devices
    from bench.results import THREAD_ENV_VARS, environment, git_info

    env = environment()
    typer.echo(f"python     {env['machine']['python']} on {env['machine']['platform']}")
    typer.echo(f"cpu        {env['machine']['cpu_name']} ({env['machine']['usable_cores']} usable of {env['machine']['cpu_count']} cores)")
    for name, version in env["versions"].items():
        typer.echo(f"{name:<10} {version or 'not installed'}")
    for framework, kinds in devices.available_devices().items():
        typer.echo(f"devices    {framework}: {', '.join(kinds) or 'none'}")
    threads = ", ".join(f"{fw} {devices.machine_info(fw)['threads']}" for fw in ("torch", "jax"))
    variables = [f"{k}={v}" for k, v in env["threads"].items() if k in THREAD_ENV_VARS and v is not None]
    typer.echo(f"threads    {threads}" + (f" ({'; '.join(variables)})" if variables else ""))
    git = git_info()
    typer.echo(f"git        {git['commit'] or 'no commit'}{' (dirty)' if git['dirty'] else ''}")


@app.command("check")
def check_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The run folder to check.")],
    budgets: Annotated[Path, typer.Option("--budgets", help="File with the [budgets] tables.")] = Path("bench.toml"),
) -> None:
    """Check a run against the budgets in bench.toml; exit 0 all pass, 1 any fails, 2 a bad budget file.

    Ratio budgets compare variants measured in the same run (they hold on any machine of the device
    class); a latency ratio fails only when its breach exceeds the run's own spread. Deterministic
    budgets (params, MACs, state bytes) are exact. Absolute p90 budgets apply only to runs whose
    machine tag matches theirs.

    \b
    Examples:
      bench run --quick --out /tmp/run && bench check /tmp/run
      bench check reports/runs/20250101T120000Z-cpu --budgets ci/bench.toml
    """
    with _user_errors():
        from bench import budgets as budgets_mod
        from bench.results import load_raw_times, load_run

        specs = budgets_mod.load_budgets(budgets)
        meta, df = load_run(run_dir)
        checks = budgets_mod.evaluate(specs, meta, df, load_raw_times(run_dir))
    typer.echo(budgets_mod.render_checks(checks))
    failed = [c for c in checks if c.status == "FAIL"]
    if failed:
        _fail(budgets_mod.failure_line(failed), code=EXIT_FAILED)


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text)
        return
    from bench.results import atomic_write_text

    atomic_write_text(out, text)
    typer.echo(str(out), err=True)


if __name__ == "__main__":  # python -m bench.cli
    app()
