"""bench.config: bench.toml into dataclasses; every problem one ConfigError naming file, key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import Config, ConfigError, MeasureConfig, load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "bench.toml"
    path.write_text(text)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "\n" not in str(e.value)
    return e.value


def test_the_committed_bench_toml_is_valid_and_runs_the_ladder():
    config = load_config(REPO / "bench.toml")
    assert config.run.variants.split(",") == ["baseline", "conv_lower", "conv_lower_downsized", "practical",
                                              "practical_cascade"]
    assert config.run.batches == (1, 64) and config.run.chunk_frames == 6 and config.run.device == "cpu"
    assert config.run.frameworks == ("jax", "torch")
    assert config.quick.min_iterations < config.measure.min_iterations


def test_no_file_means_the_built_in_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config() == Config()


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
    assert config.measure == MeasureConfig(min_iterations=100)
    assert config.measure_for(quick=True).counters is True
    assert config.to_dict()["path"] == str(path)


def test_a_missing_file_is_a_config_error(tmp_path):
    e = error_of(tmp_path / "nope.toml")
    assert "file not found" in str(e)
