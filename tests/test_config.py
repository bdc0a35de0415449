"""bench.config: bench.toml (+ flags) into one Config; every problem one ConfigError naming file, key and line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import variants
from bench.config import SHIPPED_CONFIG_PATH, ConfigError, FlagError, apply_flags, load_config

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
    assert config.run.frameworks == ("jax", "torch")
    assert config.quick.min_iterations < config.measure.min_iterations


def test_the_quick_preset_is_bench_tomls():
    quick = load_config(REPO / "bench.toml").measure_for(quick=True)
    assert (quick.warmup_iterations, quick.min_iterations) == (2, 5)
    assert not (quick.counters or quick.second_pass or quick.roofline)


def test_without_a_local_file_the_repositorys_bench_toml_applies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert SHIPPED_CONFIG_PATH == REPO / "bench.toml"
    assert load_config() == load_config(REPO / "bench.toml")


def test_a_file_overrides_only_the_keys_it_sets(tmp_path):
    shipped = load_config()
    config = load_config(write(tmp_path, "[run]\nbatches = [4]\n[measure.quick]\nmin_iterations = 9\n"))
    assert config.run == dataclasses.replace(shipped.run, batches=(4,))
    assert config.quick == dataclasses.replace(shipped.quick, min_iterations=9)
    assert config.measure == shipped.measure


def test_the_repositorys_bench_toml_must_set_every_key(tmp_path, monkeypatch):
    from bench import config as config_mod

    shipped = tmp_path / "shipped.toml"
    shipped.write_text((REPO / "bench.toml").read_text().replace("min_iterations = 20\n", ""))
    monkeypatch.setattr(config_mod, "SHIPPED_CONFIG_PATH", shipped)
    monkeypatch.chdir(tmp_path)
    e = error_of(None)
    assert str(e).startswith(f"{shipped}:") and "measure.min_iterations: missing" in str(e)


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
])
def test_a_bad_value_names_file_key_and_line(tmp_path, text, line, key, says):
    path = write(tmp_path, text)
    e = error_of(path)
    assert str(e).startswith(f"{path}:{line}: {key}: "), str(e)
    assert says in str(e)


def test_values_are_read_into_dataclasses(tmp_path):
    path = write(tmp_path, '[run]\nvariants = "perf*"\nbatches = 8\nmachine_tag = "ci-box"\n'
                           '[measure]\nmin_iterations = 100\n[measure.quick]\ncounters = true\n')
    config = load_config(path)
    assert config.run.variants == "perf*" and config.run.batches == (8,) and config.run.machine_tag == "ci-box"
    assert config.measure == dataclasses.replace(load_config().measure, min_iterations=100)
    assert config.measure_for(quick=True).counters is True
    assert config.to_dict()["path"] == str(path)


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
    (dict(framework="tf"), "'tf' is not one of jax, torch, all"),
    (dict(chunk=4), "needs a multiple of 3"),
    (dict(torch_mode="jit"), "choose from eager, compile"),
    (dict(dtype="fp8"), "choose from float32, bfloat16"),
    (dict(device="xpu"), "'xpu' is not one of cpu, gpu, tpu"),
])
def test_a_bad_flag_is_one_flag_error(flags, says):
    with pytest.raises(FlagError, match=says) as e:
        apply_flags(load_config(REPO / "bench.toml"), **flags)
    assert "\n" not in str(e.value)
