"""bench.config: bench.toml (+ flags) into one Config; every problem one ConfigError naming file, key and line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import variants
from bench.config import (SHIPPED_CONFIG_PATH, AbSettings, AcceptedSlowdown, ConfigError, FlagError, apply_flags,
                          load_config)

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "bench.toml"
    path.write_text(text)
    return path


def error_of(path: Path | None) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "\n" not in str(e.value)
    return e.value


def test_the_committed_bench_toml_is_valid_and_runs_the_ladder():
    config = load_config(REPO / "bench.toml")
    assert config.run.variants.split(",") == variants.names()[:5]  # the ablation ladder, in registry order
    assert config.run.batches == (1, 64) and config.run.chunk_frames == 6 and config.run.device == "cpu"
    assert config.run.frameworks == ("jax", "torch", "onnxruntime")
    assert config.quick.rounds * config.quick.steps_per_round <= config.measure.rounds * config.measure.steps_per_round
    assert config.quick.min_time_s <= config.measure.min_time_s and config.measure.timeout_s > 0


def test_the_quick_preset_is_bench_tomls():
    import tomllib

    quick = load_config(REPO / "bench.toml").measure_for(quick=True)
    written = tomllib.loads((REPO / "bench.toml").read_text())["measure"]["quick"]
    assert {key: getattr(quick, key) for key in written} == written  # every key the file sets, as it sets it
    assert quick.rounds >= 3  # enough rounds for an interval
    assert not (quick.counters or quick.second_pass or quick.roofline)


def test_without_a_local_file_the_repositorys_bench_toml_applies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert SHIPPED_CONFIG_PATH == REPO / "bench.toml"
    assert load_config() == load_config(REPO / "bench.toml")


def test_a_file_overrides_only_the_keys_it_sets(tmp_path):
    shipped = load_config()
    config = load_config(write(tmp_path, "[run]\nbatches = [4]\n[measure.quick]\nrounds = 9\n"))
    assert config.run == dataclasses.replace(shipped.run, batches=(4,))
    assert config.quick == dataclasses.replace(shipped.quick, rounds=9)
    assert config.measure == shipped.measure


def test_the_repositorys_bench_toml_must_set_every_key(tmp_path, monkeypatch):
    from bench import config as config_mod

    shipped = tmp_path / "shipped.toml"
    text = (REPO / "bench.toml").read_text()
    line = re.search(r"\nrounds = \d+\n", text).group(0)  # the first: [measure]'s
    shipped.write_text(text.replace(line, "\n", 1))
    monkeypatch.setattr(config_mod, "SHIPPED_CONFIG_PATH", shipped)
    monkeypatch.chdir(tmp_path)
    e = error_of(None)
    assert str(e).startswith(f"{shipped}:") and "measure.rounds: missing" in str(e)


def test_a_syntax_error_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, '[run]\ndevice = "cpu"\nbatches = [1, 64\n')
    e = error_of(path)
    assert str(e).startswith(f"{path}:3: invalid TOML") or str(e).startswith(f"{path}:4: invalid TOML")
    assert e.line in (3, 4)


@pytest.mark.parametrize("text, line, key, says", [
    ('[run]\ndevice = "cpu"\nbatches = [0, 64]\n', 3, "run.batches", "positive integers"),
    ('[run]\nbatches = 1.5\n', 2, "run.batches", "positive integers"),
    ('[run]\n\nchunk_frames = "six"\n', 3, "run.chunk_frames", "positive integer"),
    ('[run]\ndevice = "xpu"\n', 2, "run.device", "'xpu' is not one of cpu, gpu, tpu"),
    ('[run]\nframeworks = ["jax", "tf"]\n', 2, "run.frameworks", "'tf' is not one of jax, torch"),
    ('[run]\ntorch_modes = ["jit"]\n', 2, "run.torch_modes", "'jit' is not one of eager, compile"),
    ('[run]\nbatchs = [1]\n', 2, "run.batchs", "unknown key"),
    ('[rnu]\nbatches = [1]\n', 1, "rnu", "unknown key"),
    ('[measure]\nmin_time_s = -1\n', 2, "measure.min_time_s", ">= 0"),
    ('[measure]\n\n[measure.quick]\nmax_time_s = 0\n', 4, "measure.quick.max_time_s", "> 0"),
    ('[measure]\ncounters = "yes"\n', 2, "measure.counters", "true or false"),
    ('run = 3\n', 1, "run", "expected a table"),
    ('[measure]\nrounds = 0\n', 2, "measure.rounds", "positive integer"),
    ('[measure]\nsteps_per_round = 2.5\n', 2, "measure.steps_per_round", "positive integer"),
    ('[measure]\nround_warmup = -1\n', 2, "measure.round_warmup", "integer >= 0"),
    ('[measure]\nwarmup_iterations = true\n', 2, "measure.warmup_iterations", "integer >= 0"),
    ('[measure]\ntimeout_s = 0\n', 2, "measure.timeout_s", "> 0"),
    ('[measure]\n\n[measure.quick]\ntimeout_s = "5 min"\n', 4, "measure.quick.timeout_s", "> 0"),
    ('[measure]\nprepare_workers = 0\n', 2, "measure.prepare_workers", "positive integer"),
    ('[measure]\nmin_iterations = 5\n', 2, "measure.min_iterations", "unknown key"),
    ('[measure.quick]\nquick = 1\n', 2, "measure.quick.quick", "unknown key"),
    ('[run]\nplugins = "mine.py"\n', 2, "run.plugins", "list of module names"),
    ('[run]\nthreads = 0\n', 2, "run.threads", "'auto' or a positive number of threads"),
    ('[run]\nthreads = "all"\n', 2, "run.threads", "'auto' or a positive number of threads"),
    ('[ab]\nthreshold = 0\n', 2, "ab.threshold", "> 0"),
    ('[ab]\nthreshhold = 0.1\n', 2, "ab.threshhold", "unknown key"),
    ('[ab]\n[[ab.accept]]\nvariant = "practical"\n', 2, "ab.accept[0]", "a variant and a reason"),
    ('[ab]\n[[ab.accept]]\nvariant = "practical"\nreason = "x"\nframework = "tf"\n', 5,
     "ab.accept[0].framework", "'tf' is not one of jax, torch"),
    ('[ab]\n[[ab.accept]]\nvariant = "practical"\nreason = "x"\nbatch = 0\n', 5, "ab.accept[0].batch",
     "positive integer"),
    ('[ab]\n[[ab.accept]]\nvariant = "practical"\nreason = "x"\nwhy = "y"\n', 5, "ab.accept[0].why", "unknown key"),
])
def test_a_bad_value_names_file_key_and_line(tmp_path, text, line, key, says):
    path = write(tmp_path, text)
    e = error_of(path)
    assert str(e).startswith(f"{path}:{line}: {key}: "), str(e)
    assert says in str(e)


def test_values_are_read_into_dataclasses(tmp_path):
    path = write(tmp_path, '[run]\nvariants = "perf*"\nbatches = 8\nmachine_tag = "ci-box"\n'
                           '[measure]\nrounds = 12\nsteps_per_round = 4\nround_warmup = 0\nmin_time_s = 2\n'
                           'max_time_s = 90.5\ntimeout_s = 30\nwarmup_iterations = 0\nprepare_workers = 1\n'
                           '[measure.quick]\ncounters = true\n')
    config = load_config(path)
    assert config.run.variants == "perf*" and config.run.batches == (8,) and config.run.machine_tag == "ci-box"
    assert config.measure == dataclasses.replace(load_config().measure, rounds=12, steps_per_round=4, round_warmup=0,
                                                 min_time_s=2.0, max_time_s=90.5, timeout_s=30.0,
                                                 warmup_iterations=0, prepare_workers=1)
    assert isinstance(config.measure.min_time_s, float) and isinstance(config.measure.timeout_s, float)
    assert config.measure_for(quick=True).counters is True
    assert config.to_dict()["path"] == str(path)


def test_threads_are_auto_unless_a_file_or_flag_gives_a_number(tmp_path):
    assert load_config(REPO / "bench.toml").run.threads == "auto"
    config = load_config(write(tmp_path, '[run]\nthreads = 1\n'))
    assert config.run.threads == 1
    assert apply_flags(config, threads="auto").threads == "auto" and apply_flags(config, threads="3").threads == 3
    assert apply_flags(config).threads == 1


def test_the_ab_gate_reads_its_threshold_and_accepted_slowdowns(tmp_path):
    shipped = load_config()
    assert shipped.ab == AbSettings(threshold=0.10, accept=())
    path = write(tmp_path, '[ab]\nthreshold = 0.05\n'
                           '[[ab.accept]]\nvariant = "practical"\nreason = "wider FFN, agreed"\n'
                           '[[ab.accept]]\nvariant = "baseline"\nreason = "r"\nframework = "jax"\nbatch = 64\n')
    ab = load_config(path).ab
    assert ab.threshold == 0.05
    assert ab.accept == (AcceptedSlowdown("practical", "wider FFN, agreed"),
                         AcceptedSlowdown("baseline", "r", framework="jax", batch=64))
    assert ab.accept[0].covers("practical", "torch", 1) and not ab.accept[0].covers("baseline", "jax", 1)
    assert ab.accept[1].covers("baseline", "jax", 64) and not ab.accept[1].covers("baseline", "jax", 1)
    assert not ab.accept[1].covers("baseline", "torch", 64)
    # a file without [ab] keeps the repository's gate; one with only a threshold keeps no accepted list
    assert load_config(write(tmp_path, "[run]\nbatches = [1]\n")).ab == shipped.ab
    assert load_config(write(tmp_path, "[ab]\nthreshold = 0.2\n")).ab == AbSettings(threshold=0.2, accept=())


def test_plugins_in_bench_toml_are_read_from_the_files_folder(tmp_path):
    path = write(tmp_path, '[run]\nplugins = ["mine.py", "my_pkg.variants"]\n')
    assert load_config(path).run.plugins == (str(tmp_path / "mine.py"), "my_pkg.variants")
    assert load_config().run.plugins == ()


def test_a_missing_file_is_a_config_error(tmp_path):
    e = error_of(tmp_path / "nope.toml")
    assert "file not found" in str(e)


# ---- flags --------------------------------------------------------------------------------------


def test_flags_replace_the_keys_they_name_and_nothing_else():
    config = load_config(REPO / "bench.toml")
    run = apply_flags(config, variant="practical,baseline", batch="1,3,1", framework="all", torch_mode="eager,compile",
                      dtype="bfloat16", out=Path("/tmp/x"), machine_tag="box")
    assert run == dataclasses.replace(config.run, variants="baseline,practical", batches=(1, 3),  # ladder order
                                      torch_modes=("eager", "compile"), dtype="bfloat16", out_dir="/tmp/x",
                                      machine_tag="box")


def test_without_flags_the_run_is_the_config_with_a_fresh_folder():
    config = load_config(REPO / "bench.toml")
    run = apply_flags(config)
    assert run.variants == config.run.variants and run.batches == config.run.batches
    folder = Path(run.out_dir)
    assert folder.parent == Path(config.run.out_dir) and folder.name.endswith("Z-cpu")


@pytest.mark.parametrize("flags, says", [
    (dict(batch="0"), "batch sizes must be >= 1"),
    (dict(batch="1,x"), "'x' is not an integer"),
    (dict(framework="tf"), "'tf' is not one of jax, torch, onnxruntime, all"),
    (dict(chunk=4), "needs a multiple of 3"),
    (dict(torch_mode="jit"), "choose from eager, compile"),
    (dict(dtype="fp8"), "choose from float32, bfloat16"),
    (dict(device="xpu"), "'xpu' is not one of cpu, gpu, tpu"),
    (dict(threads="0"), "--threads: expected 'auto' or a positive number"),
    (dict(threads="two"), "--threads: expected 'auto' or a positive number"),
])
def test_a_bad_flag_is_one_flag_error(flags, says):
    with pytest.raises(FlagError, match=says) as e:
        apply_flags(load_config(REPO / "bench.toml"), **flags)
    assert "\n" not in str(e.value)


def test_spec_overrides_come_from_run_set_and_flags_and_make_a_grid(tmp_path):
    from bench.config import apply_flags, load_config

    path = tmp_path / "bench.toml"
    path.write_text('[run]\nvariants = ["baseline", "practical"]\n[run.set]\nleft_context = [32, 64]\n')
    cfg = load_config(path)
    assert cfg.run.spec_set == (("left_context", ("32", "64")),)
    run = apply_flags(cfg, out=tmp_path / "r")
    assert run.variants == (
        "baseline[left_context=32],practical[left_context=32],baseline[left_context=64],practical[left_context=64]")
    # a flag replaces the config's values for its field and adds its own; names follow the spec's field order
    run = apply_flags(cfg, spec_set=("left_context=128", "num_blocks=12,16"), out=tmp_path / "r")
    assert run.spec_set == (("left_context", ("128",)), ("num_blocks", ("12", "16")))
    assert run.variants.split("],") == ["baseline[num_blocks=12,left_context=128", "practical[num_blocks=12,left_context=128",
                                        "baseline[num_blocks=16,left_context=128", "practical[num_blocks=16,left_context=128]"]


@pytest.mark.parametrize("table, says", [
    ("[run.set]\nleft_contxt = [1]\n", "run.set.left_contxt"),
    ("[run.set]\nleft_context = [true]\n", "expected a number"),
    ("[run.set]\nnum_heads = 7\n", None),  # valid as a value; the spec rejects it when the grid is made
])
def test_a_bad_run_set_names_the_key(tmp_path, table, says):
    from bench.config import ConfigError, FlagError, apply_flags, load_config
    from variants.spec import SpecOverrideError

    path = tmp_path / "bench.toml"
    path.write_text(table)
    if says is None:
        with pytest.raises(SpecOverrideError, match="not divisible by num_heads=7"):
            apply_flags(load_config(path), out=tmp_path / "r")
        return
    with pytest.raises(ConfigError, match=says):
        load_config(path)
