"""The `bench` command as a user drives it (typer's CliRunner), with fake in-process workers: no model is built
(tests/test_worker.py drives `bench run` with real worker processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import variants
from bench import results
from bench.cli import app
from bench.config import MeasureSettings, load_config
from bench.schema import RECORD_KEYS, raw_key
from bench_fakes import FakeWorkers, install

cli = CliRunner()
PLUGIN = Path(__file__).resolve().parent / "plugins" / "misbehaving.py"
LADDER = load_config().run.variants.split(",")  # what `bench run` measures with no flags


def invoke(*args: str):
    return cli.invoke(app, list(args))


def assert_one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bench: error: ")
    assert "Traceback" not in result.output
    return lines[0]


def assert_run_summary(result, code: int) -> str:
    """A run that started prints progress on stderr; its last line is the one-line verdict."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("bench: error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    return errors[0]


def pin_quick(monkeypatch, folder: Path) -> None:
    """Run from `folder`, whose bench.toml makes --quick exactly `rounds` rounds (no warm-up rounds, no
    extra rounds for small steps), so a test can count the fake workers' requests."""
    (folder / "bench.toml").write_text("[measure.quick]\nwarmup_rounds = 0\nmin_time_s = 0.0\n")
    monkeypatch.chdir(folder)


def load(out):
    data = json.loads((out / results.RESULTS_JSON).read_text())
    return data["meta"], data["records"]


# ---- list / help ----------------------------------------------------------------------------------


def test_list_shows_every_variant_in_ladder_order_with_params():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == variants.names()
    assert "121.1M" in lines[0] and variants.get("baseline").description in lines[0]


@pytest.fixture
def own_registry(monkeypatch):
    """Plugins a test loads register into a copy of the registry: later tests see the package's variants only."""
    import sys

    from variants import registry

    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("bench_plugin_"):
            del sys.modules[name]


def test_list_shows_the_variants_of_a_plugin_after_the_ladder(own_registry, monkeypatch):
    result = invoke("list", "--plugin", str(PLUGIN))
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.stdout.strip().splitlines()]
    assert names[:5] == LADDER and "tiny_ok" in names and "tiny_segfault" in names
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("tiny_ok ")]
    assert "a tiny encoder that measures normally" in line
    monkeypatch.chdir(PLUGIN.parent.parent.parent)
    result = invoke("list", "tiny_*", "--plugin", "tests/plugins/misbehaving.py")  # a relative path too
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.strip().splitlines()] == [
        "tiny_ok", "tiny_wide", "tiny_segfault", "tiny_exit", "tiny_hang"]


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "missing.py", "missing.py"),
    (lambda d: (d / "broken.py").write_text("import no_such_module_here\n") and d / "broken.py",
     "No module named 'no_such_module_here'"),
    (lambda d: "no_such_plugin_module", "no_such_plugin_module"),
])
@pytest.mark.parametrize("verb", ["list", "run"])
def test_a_plugin_that_does_not_import_is_one_line_and_exit_2(own_registry, monkeypatch, tmp_path, make, says, verb):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    result = invoke(verb, "--plugin", str(make(tmp_path)), *(["--out", str(tmp_path / "run")] if verb == "run" else []))
    line = assert_one_line_error(result)
    assert "plugin" in line and says in line
    assert not fake.calls and not (tmp_path / "run").exists()


def test_list_takes_a_glob():
    result = invoke("list", "practical*")
    assert [line.split()[0] for line in result.stdout.strip().splitlines()] == ["practical", "practical_cascade"]


@pytest.mark.parametrize("verb", ["list", "run", "profile", "sweep", "report", "plot", "compare", "env", "check"])
def test_every_verb_has_help_with_examples(verb):
    result = invoke(verb, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and f"bench {verb}" in result.stdout


def test_no_arguments_prints_help():
    result = invoke()
    assert result.exit_code == 0 and "Commands" in result.stdout


# ---- bad input: exit 2, one line ------------------------------------------------------------------


@pytest.mark.parametrize("args, says", [
    (["run", "--batch", "0"], "batch sizes must be >= 1"),
    (["run", "--batch", "1,x"], "'x' is not an integer"),
    (["run", "--variant", "nope"], "valid variants: baseline, conv_lower"),
    (["run", "--variant", "zz*"], "no variant matches 'zz*'"),
    (["run", "--chunk", "0"], "positive number"),
    (["run", "--chunk", "4"], "needs a multiple of 3"),
    (["run", "--chunk", "abc"], "Invalid value for '--chunk'"),
    (["run", "--framework", "tf"], "'tf' is not one of jax, torch"),
    (["run", "--device", "xpu"], "'xpu' is not one of cpu, gpu, tpu"),
    (["run", "--torch-mode", "jit"], "choose from eager, compile"),
    (["run", "--dtype", "fp8"], "choose from float32, bfloat16"),
    (["run", "--threads", "0"], "--threads: expected 'auto' or a positive number of threads"),
    (["run", "--no-such-flag"], "No such option"),
    (["report", "/no/such/run"], "no such run folder"),
    (["report", "."], "not a run folder"),
    (["compare", "/no/a", "/no/b"], "no such run folder"),
    (["report", "/no/such/run", "--format", "html"], "'html' is not one of markdown, csv, latex"),
])
def test_bad_input_exits_2_with_one_line(monkeypatch, tmp_path, args, says):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    monkeypatch.chdir(tmp_path)
    line = assert_one_line_error(invoke(*args))
    assert says in line
    assert not fake.calls and not (tmp_path / "reports").exists()


def test_a_device_that_is_not_here_exits_2_naming_what_is():
    # The real device probe: this machine has no TPU.
    line = assert_one_line_error(invoke("run", "--device", "tpu", "--variant", "practical"))
    assert "'tpu' is not available" in line and "available: jax: cpu" in line and "torch: cpu" in line


def test_a_default_framework_without_the_device_is_skipped_with_one_line_and_the_run_exits_0(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake, devices={"jax": ["cpu", "gpu"], "torch": ["cpu"], "onnxruntime": ["cpu", "gpu"]})
    result = invoke("run", "--device", "gpu", "--variant", "baseline,practical", "--batch", "1", "--quick",
                    "--no-progress", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    skips = [line for line in result.stderr.splitlines() if "skipping" in line]
    assert len(skips) == 1 and skips[0].startswith("bench: skipping torch on gpu") and "CUDA build of torch" in skips[0]
    _, records = load(tmp_path / "run")
    assert {r["framework"] for r in records} == {"jax", "onnxruntime"} and {r["device"] for r in records} == {"gpu"}
    assert {r["device_name"] for r in records} == {"fake gpu"}  # the run's one name for the device
    assert {c["framework"] for c in fake.calls} == {"jax", "onnxruntime"}


def test_naming_a_framework_without_the_device_exits_2(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake, devices={"jax": ["cpu", "gpu"], "torch": ["cpu"]})
    line = assert_one_line_error(invoke("run", "--device", "gpu", "--framework", "torch", "--out", str(tmp_path / "r")))
    assert "'gpu' is not available to torch" in line and line.endswith("available: torch: cpu")
    assert not fake.calls


def test_the_precision_is_applied_in_every_worker_and_recorded(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    assert "choose from highest, high, default" in assert_one_line_error(invoke("run", "--precision", "tf32"))
    result = invoke("run", "--variant", "baseline,practical", "--batch", "1", "--quick", "--precision", "high",
                    "--no-progress", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert {c["precision"] for c in fake.calls} == {"high"}
    meta, records = load(tmp_path / "run")
    assert {r["precision"] for r in records} == {"high"} and meta["config"]["run"]["precision"] == "high"
    assert "computed in float32, matmul precision high" in (tmp_path / "run" / results.TABLE_MD).read_text()


def test_env_names_versions_devices_and_threads():
    result = invoke("env")
    assert result.exit_code == 0, result.output
    for word in ("python", "torch", "jax", "devices    jax: cpu", "threads", "git", "simd"):
        assert word in result.stdout


def test_env_shows_each_cache_its_contents_and_its_bound(monkeypatch, tmp_path):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "step-a.onnx").write_bytes(b"x" * 3_000_000)
    monkeypatch.setenv("BENCH_ONNX_CACHE", str(tmp_path / "onnx"))
    monkeypatch.setenv("BENCH_ONNX_CACHE_GB", "2.5")
    monkeypatch.setenv("BENCH_XLA_CACHE", "off")
    lines = [line for line in invoke("env").stdout.splitlines() if line.startswith("cache")]
    assert lines == [f"cache      onnx: {tmp_path / 'onnx'}, 0.00 GB in 1 files (bound 2.5 GB, BENCH_ONNX_CACHE_GB)",
                     "cache      xla: off (BENCH_XLA_CACHE)"]
    monkeypatch.setenv("BENCH_ONNX_CACHE_GB", "many")  # shown, not raised: env is where one looks for it
    assert "(BENCH_ONNX_CACHE_GB='many' is not a number of GB)" in invoke("env").stdout


def test_a_malformed_config_exits_2_naming_file_and_line(monkeypatch, tmp_path):
    install(monkeypatch, FakeWorkers())
    bad = tmp_path / "bench.toml"
    bad.write_text("[run]\nbatches = [1, 64\nchunk_frames = 6\n")
    line = assert_one_line_error(invoke("run", "--config", str(bad)))
    assert f"{bad}:2" in line or f"{bad}:3" in line
    bad.write_text("[run]\nchunk_frames = 6\nbatches = [0]\n")
    line = assert_one_line_error(invoke("run", "--config", str(bad)))
    assert f"{bad}:3: run.batches" in line


@pytest.mark.parametrize("verb", ["run", "plot"])
def test_an_unwritable_out_folder_exits_2_with_one_line(monkeypatch, tmp_path, verb):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    run = tmp_path / "run"
    assert invoke("run", "--variant", "baseline", "--batch", "1", "--framework", "jax", "--out", str(run)).exit_code == 0
    fake.calls.clear()
    args = ["run", "--variant", "baseline"] if verb == "run" else ["plot", str(run)]
    line = assert_one_line_error(invoke(*args, "--out", "/proc/x"))
    assert "/proc/x" in line
    assert not fake.calls


def test_a_bad_export_cache_bound_is_one_line_before_anything_runs(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    monkeypatch.setenv("BENCH_ONNX_CACHE_GB", "ten")
    line = assert_one_line_error(invoke("run", "--framework", "onnxruntime", "--out", str(tmp_path / "run")))
    assert line == "bench: error: BENCH_ONNX_CACHE_GB='ten' is not a number of GB"
    assert not fake.calls
    assert invoke("run", "--framework", "jax", "--variant", "baseline", "--batch", "1",
                  "--out", str(tmp_path / "jax")).exit_code == 0  # read only where ONNX Runtime runs


def test_an_existing_run_folder_is_not_overwritten(monkeypatch, tmp_path):
    install(monkeypatch, FakeWorkers())
    out = tmp_path / "run"
    assert invoke("run", "--variant", "baseline", "--batch", "1", "--out", str(out)).exit_code == 0
    assert "already holds a run" in assert_one_line_error(invoke("run", "--variant", "baseline", "--out", str(out)))


# ---- a run ----------------------------------------------------------------------------------------


def test_default_run_measures_the_ladder_into_a_timestamped_folder(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    monkeypatch.chdir(tmp_path)  # no bench.toml here: the built-in defaults
    result = invoke("run", "--no-progress")
    assert result.exit_code == 0, result.output
    (out,) = (tmp_path / "reports" / "runs").iterdir()
    assert out.name.endswith("Z-cpu")
    meta, records = load(out)
    assert len(records) == len(LADDER) * 3 * 2  # variants x frameworks x batches (1, 64)
    groups = [records[i:i + len(LADDER)] for i in range(0, len(records), len(LADDER))]
    for group in groups:  # one group per (framework, batch), its variants in ladder order
        assert [r["variant"] for r in group] == LADDER
        assert len({(r["framework"], r["mode"], r["batch"]) for r in group}) == 1
    assert {(c["framework"], c["mode"]) for c in fake.calls} == {("jax", "jit"), ("torch", "eager"),
                                                                  ("onnxruntime", "session")}
    assert all(MeasureSettings(**c["settings"]) == load_config().measure and c["chunk_frames"] == 6
               for c in fake.calls)
    assert meta["status"] == "complete" and meta["finished_utc"]
    assert meta["config"]["run"]["batches"] == [1, 64] and meta["config"]["quick_run"] is False
    for key in ("machine", "versions", "threads", "git", "started_utc"):
        assert key in meta
    assert "practical" in result.stdout  # the table is printed at the end


def test_results_schema_has_every_contract_key(monkeypatch, tmp_path):
    install(monkeypatch, FakeWorkers())
    pin_quick(monkeypatch, tmp_path)
    out = tmp_path / "run"
    result = invoke("run", "--variant", "baseline,practical", "--batch", "1", "--out", str(out), "--quick")
    assert result.exit_code == 0, result.output
    _, records = load(out)
    for record in records:
        assert set(RECORD_KEYS) <= set(record)
        assert "raw_step_s" not in record  # raw times live in raw_times.json
    csv = pd.read_csv(out / results.RESULTS_CSV)
    assert list(csv.columns[: len(RECORD_KEYS)]) == list(RECORD_KEYS)
    quick = load_config().quick  # ./bench.toml's, over the repository's
    rounds = results.load_raw_rounds(out)
    assert set(rounds) == {raw_key(r) for r in records}
    assert all(len(r) == quick.rounds and all(len(b) == quick.steps_per_round for b in r) for r in rounds.values())
    speedup = {(r["variant"], r["framework"]): r for r in records}
    assert speedup[("baseline", "jax")]["speedup_vs_baseline"] == pytest.approx(1.0)
    practical = speedup[("practical", "jax")]
    assert practical["speedup_vs_baseline"] == pytest.approx(10.0 / 4.0, rel=0.05)
    assert practical["speedup_ci_low"] < practical["speedup_vs_baseline"] < practical["speedup_ci_high"]
    assert set(csv.columns) >= {"speedup_ci_low", "speedup_ci_high", "rounds", "worker"}
    assert (out / results.TABLE_MD).read_text().count("practical") >= 1


def test_failed_variants_are_recorded_and_the_run_goes_on_then_exits_1(monkeypatch, tmp_path):
    install(monkeypatch, FakeWorkers(fail=("conv_lower",), raise_for=("practical",)))
    out = tmp_path / "run"
    result = invoke("run", "--variant", "baseline,conv_lower,practical,practical_cascade", "--batch", "1",
                    "--out", str(out))
    line = assert_run_summary(result, code=1)
    assert "6 of 12 measurements failed" in line and "conv_lower" in line  # 2 of 4 variants x 3 frameworks
    _, records = load(out)
    assert len(records) == 12
    by_variant = {}
    for r in records:
        by_variant.setdefault(r["variant"], set()).add(r["status"])
    assert by_variant == {"baseline": {"ok"}, "conv_lower": {"failed"}, "practical": {"failed"},
                          "practical_cascade": {"ok"}}
    raised = [r for r in records if r["variant"] == "practical"]
    assert raised[0]["error"] == "RuntimeError: adapter bug for practical"  # one line, from an exception
    assert all(r["speedup_vs_baseline"] is None for r in records if r["status"] == "failed")


def test_an_interrupted_run_keeps_what_it_measured(monkeypatch, tmp_path):
    pin_quick(monkeypatch, tmp_path)
    rounds = load_config().quick.rounds
    # Ctrl-C in the third round of the second group (jax batch 64), before any timing of torch
    install(monkeypatch, FakeWorkers(interrupt_at=2 * rounds + 5))
    out = tmp_path / "run"
    result = invoke("run", "--variant", "baseline,practical", "--batch", "1,64", "--out", str(out), "--quick")
    line = assert_run_summary(result, code=130)
    assert "interrupted; 4 records kept" in line
    meta, records = load(out)
    assert meta["status"] == "interrupted"
    assert [(r["variant"], r["framework"], r["batch"]) for r in records] == [
        ("baseline", "jax", 1), ("practical", "jax", 1), ("baseline", "jax", 64), ("practical", "jax", 64)]
    assert [r["rounds"] for r in records[:2]] == [rounds, rounds]
    assert {r["rounds"] for r in records[2:]} <= {2, 3}  # the rounds timed before the interrupt are kept
    assert len(pd.read_csv(out / results.RESULTS_CSV)) == 4
    assert len(results.load_raw_rounds(out)) == 4


def test_flags_override_the_config(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    config = tmp_path / "bench.toml"
    config.write_text('[run]\nvariants = "baseline"\nframeworks = ["jax"]\nbatches = [2]\nchunk_frames = 12\n'
                      '[measure.quick]\nrounds = 7\nwarmup_rounds = 0\nmin_time_s = 0.0\n')
    result = invoke("run", "--config", str(config), "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert [(c["variant"], c["framework"], c["batch"], c["chunk_frames"]) for c in fake.calls] == [("baseline", "jax", 2, 12)]
    assert fake.calls[0]["dtype"] == "float32"
    fake.calls.clear()
    result = invoke("run", "--config", str(config), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert [c["dtype"] for c in fake.calls] == ["bfloat16"]
    fake.calls.clear()
    result = invoke("run", "--config", str(config), "--out", str(tmp_path / "b"), "--batch", "1,3", "--framework", "all",
                    "--quick", "--torch-mode", "eager,compile")
    assert result.exit_code == 0, result.output
    assert {(c["framework"], c["mode"], c["batch"]) for c in fake.calls} == {
        ("jax", "jit", 1), ("jax", "jit", 3), ("torch", "eager", 1), ("torch", "eager", 3),
        ("torch", "compile", 1), ("torch", "compile", 3), ("onnxruntime", "session", 1), ("onnxruntime", "session", 3)}
    settings = MeasureSettings(**fake.calls[0]["settings"])
    assert settings.rounds == 7  # [measure.quick] reached the workers
    assert len(results.load_raw_rounds(tmp_path / "b")["baseline|jax|jit|cpu|1"]) == 7
    assert settings.warmup_iterations == load_config().quick.warmup_iterations  # the rest: the repository's preset


# ---- report / compare on run folders --------------------------------------------------------------


def test_report_and_compare_read_run_folders(monkeypatch, tmp_path):
    install(monkeypatch, FakeWorkers())
    for name in ("a", "b"):
        assert invoke("run", "--variant", "baseline,practical", "--batch", "1", "--out", str(tmp_path / name)).exit_code == 0
    result = invoke("report", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert "practical" in result.stdout
    result = invoke("report", str(tmp_path / "a"), "--out", str(tmp_path / "table.tex"), "--format", "latex")
    assert result.exit_code == 0 and "tabular" in (tmp_path / "table.tex").read_text()
    result = invoke("compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert "practical" in result.stdout and "Mann-Whitney" in result.stdout
    assert "different machines" not in result.stderr
    # the same runs as if B had been made on another CPU that the hypervisor names alike
    path = tmp_path / "b" / "results.json"
    data = json.loads(path.read_text())
    assert data["meta"]["machine"]["cpu_id"]  # recorded by a run on this machine
    data["meta"]["machine"]["cpu_id"] = "AuthenticAMD family 25 model 1 stepping 1, L3 32768K"
    path.write_text(json.dumps(data))
    result = invoke("compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert "bench: note: the runs were made on different machines (cpu_id" in result.stderr
    assert "family 25 model 1" in result.stderr and "practical" in result.stdout


def test_a_broken_plugin_fails_every_time_it_is_loaded(own_registry, tmp_path):
    broken = tmp_path / "broken_twice.py"
    broken.write_text("raise RuntimeError('not fixed yet')\n")
    for _ in range(2):  # e.g. a notebook cell run again, or two CLI invocations in one process
        line = assert_one_line_error(invoke("list", "--plugin", str(broken)))
        assert "not fixed yet" in line


def test_set_measures_every_variant_in_every_cell_with_its_own_baseline(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    result = invoke("run", "--variant", "baseline,practical", "--batch", "1", "--framework", "jax", "--quick",
                    "--set", "left_context=32,128", "--no-progress", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    _, records = load(tmp_path / "run")
    by_name = {r["variant"]: r for r in records}
    assert set(by_name) == {"baseline[left_context=32]", "practical[left_context=32]",
                            "baseline[left_context=128]", "practical[left_context=128]"}
    practical = by_name["practical[left_context=128]"]
    assert practical["base_variant"] == "practical" and practical["overrides"] == "left_context=128"
    assert practical["set_left_context"] == "128"
    for cell in ("32", "128"):  # each cell's speedup divides by the baseline of the same cell
        base, own = by_name[f"baseline[left_context={cell}]"], by_name[f"practical[left_context={cell}]"]
        assert base["speedup_vs_baseline"] == 1.0
        assert own["speedup_vs_baseline"] == pytest.approx(base["latency_ms_p50"] / own["latency_ms_p50"])


@pytest.mark.parametrize("flag, says", [
    ("left_contxt=1", "left_contxt: is not a spec field"),
    ("num_heads=7", "not divisible by num_heads=7"),
    ("left_context", "expected FIELD=VALUE"),
])
def test_a_bad_set_is_one_line_and_exit_2(monkeypatch, tmp_path, flag, says):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    line = assert_one_line_error(invoke("run", "--set", flag, "--out", str(tmp_path / "r")))
    assert says in line and not fake.calls


def test_sweep_measures_the_config_grid_and_prints_the_map(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    (tmp_path / "bench.toml").write_text('[sweep]\nvariants = ["baseline", "practical"]\nframeworks = ["jax"]\n'
                                         'batches = [1, 4]\n[sweep.set]\nleft_context = [16, 64]\n')
    monkeypatch.chdir(tmp_path)
    result = invoke("sweep", "--no-progress")
    assert result.exit_code == 0, result.output
    (out,) = (tmp_path / "reports" / "runs").iterdir()
    assert out.name.endswith("-sweep-cpu")
    meta, records = load(out)
    assert len(records) == 2 * 2 * 2  # variants x cells x batches
    assert {c["roofline"] for c in (c["settings"] for c in fake.calls)} == {True}  # the map needs this machine's peaks
    assert meta["config"]["quick_run"] is True
    assert "the speedup map" in result.stdout and "left_context=64" in result.stdout


def test_a_grid_that_would_not_fit_in_memory_is_refused_before_it_starts(monkeypatch, tmp_path):
    from bench import machine

    fake = FakeWorkers()
    install(monkeypatch, fake)
    monkeypatch.setattr(machine, "available_memory_bytes", lambda: 4 << 30)
    line = assert_one_line_error(invoke("run", "--variant", "baseline,practical", "--batch", "64",
                                        "--set", "left_context=64,256", "--out", str(tmp_path / "r")))
    assert "GiB at once" in line and "4.0 GiB is available" in line
    assert not fake.calls and not (tmp_path / "r").exists()


def test_sweep_on_ray_without_ray_says_how_to_install_it(monkeypatch, tmp_path):
    import importlib.util

    fake = FakeWorkers()
    install(monkeypatch, fake)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    line = assert_one_line_error(invoke("sweep", "--ray", "--out", str(tmp_path / "r")))
    assert "pip install -e '.[ray]'" in line
    assert "--address needs --ray" in assert_one_line_error(invoke("sweep", "--address", "auto"))
    assert not fake.calls


# ---- settings only some frameworks run ------------------------------------------------------------


def test_int8_named_with_a_framework_that_cannot_run_it_exits_2(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    line = assert_one_line_error(invoke("run", "--dtype", "int8", "--framework", "jax,onnxruntime",
                                        "--out", str(tmp_path / "r")))
    assert "int8" in line and "onnxruntime only, not jax" in line
    assert not fake.calls


def test_int8_from_the_default_frameworks_runs_onnxruntime_and_says_what_it_skipped(monkeypatch, tmp_path):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    result = invoke("run", "--dtype", "int8", "--variant", "baseline,practical", "--batch", "1", "--quick",
                    "--no-progress", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    skips = [line for line in result.stderr.splitlines() if "skipping" in line]
    assert skips == ["bench: skipping jax: --dtype int8 runs in onnxruntime only",
                     "bench: skipping torch: --dtype int8 runs in onnxruntime only"]
    assert {(c["framework"], c["dtype"]) for c in fake.calls} == {("onnxruntime", "int8")}


@pytest.mark.parametrize("mode, elsewhere, needed", [("cudagraphs", [], "--device gpu"),
                                                     ("onednn", ["--device", "gpu"], "--device cpu")])
def test_a_torch_mode_named_off_its_device_exits_2(monkeypatch, tmp_path, mode, elsewhere, needed):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    line = assert_one_line_error(invoke("run", "--torch-mode", mode, *elsewhere, "--out", str(tmp_path / "r")))
    assert mode in line and needed in line
    assert not fake.calls


@pytest.mark.parametrize("mode, skips, measured", [
    ("cudagraphs", ["bench: skipping torch/cudagraphs on cpu: it replays CUDA graphs, which need --device gpu"],
     {"eager"}),
    ("onednn", [], {"eager", "onednn"}),
])
def test_a_torch_mode_from_the_config_runs_on_its_device_and_is_skipped_elsewhere(monkeypatch, tmp_path, mode, skips,
                                                                                   measured):
    fake = FakeWorkers()
    install(monkeypatch, fake)
    config = tmp_path / "bench.toml"
    config.write_text(f'[run]\nvariants = "baseline"\nframeworks = ["torch"]\ntorch_modes = ["eager", "{mode}"]\n'
                      'batches = [1]\n')
    result = invoke("run", "--config", str(config), "--quick", "--no-progress", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if "skipping" in line] == skips
    assert {(c["framework"], c["mode"]) for c in fake.calls} == {("torch", m) for m in measured}


def test_a_reader_that_stops_early_ends_the_listing_quietly():
    """`bench list | head -1`: stdout is closed before bench writes; no error line, no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "from bench.cli import app; app()", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the interpreter has imported anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.decode().strip() == ""
