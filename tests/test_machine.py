"""bench.machine: run-time device resolution, the one-line unavailable-device error, machine info, git."""

import subprocess

import pytest

from bench import machine
from bench.machine import DeviceUnavailableError, available_devices, machine_info, resolve_device
from bench.schema import DEVICES, FRAMEWORKS

AVAILABLE = available_devices()


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("kind", DEVICES)
def test_available_devices_are_exactly_those_that_resolve(framework, kind):
    assert "cpu" in AVAILABLE[framework]
    if kind in AVAILABLE[framework]:
        native = resolve_device(framework, kind)
        assert machine.device_name(native)
    else:
        with pytest.raises(DeviceUnavailableError):
            resolve_device(framework, kind)


def test_cpu_resolves_to_each_frameworks_cpu_device():
    assert resolve_device("jax", "cpu").platform == "cpu"
    assert resolve_device("torch", "cpu").type == "cpu"
    assert machine.device_name(resolve_device("jax", "cpu")) == machine.cpu_name()


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_a_missing_device_fails_with_one_line_naming_what_is_available(framework, kind):
    if kind in AVAILABLE[framework]:
        pytest.skip(f"{framework} has a {kind} here")
    with pytest.raises(DeviceUnavailableError) as info:
        resolve_device(framework, kind)
    message = str(info.value)
    assert "\n" not in message
    assert repr(kind) in message and framework in message
    assert f"available: {', '.join(AVAILABLE[framework])}" in message


def test_check_available_names_the_frameworks_that_lack_the_device(monkeypatch):
    monkeypatch.setattr(machine, "available_devices",
                        lambda frameworks=FRAMEWORKS: {"jax": ["cpu", "gpu"], "torch": ["cpu"]})
    machine.check_available("gpu", ("jax",))
    with pytest.raises(DeviceUnavailableError) as info:
        machine.check_available("gpu", ("jax", "torch"))
    assert str(info.value) == ("device 'gpu' is not available to torch on this machine; "
                               "available: jax: cpu, gpu; torch: cpu")


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError):
        resolve_device("jax", "npu")
    with pytest.raises(ValueError):
        resolve_device("tensorflow", "cpu")


def test_machine_info_records_threads_cpu_and_versions():
    import torch

    info = machine_info("torch")
    assert info["threads"] == torch.get_num_threads()
    assert machine_info("jax")["threads"] == info["usable_cores"] >= 1
    assert info["version_jax"] and info["version_torch"] and info["version_numpy"]
    assert info["cpu_name"]


def test_environment_lists_every_library_and_thread_variable():
    env = machine.environment()
    assert set(env["versions"]) == set(machine.LIBRARIES)
    assert set(machine.THREAD_ENV_VARS) <= set(env["threads"])
    assert env["machine"]["usable_cores"] == machine.usable_cores()


def test_git_info_reads_the_checkout_it_is_given(tmp_path):
    assert machine.git_info(tmp_path) == {"commit": None, "dirty": None}  # not a checkout

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f").write_text("a")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    info = machine.git_info(tmp_path)
    assert len(info["commit"]) == 40 and info["dirty"] is False
    (tmp_path / "f").write_text("b")
    assert machine.git_info(tmp_path)["dirty"] is True
