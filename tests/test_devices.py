"""bench.devices: run-time device resolution, the one-line unavailable-device error, machine info."""

import pytest

from bench.devices import DEVICE_KINDS, DeviceUnavailableError, available_devices, machine_info, resolve_device

AVAILABLE = available_devices()


def test_cpu_is_always_available():
    assert AVAILABLE == {"jax": AVAILABLE["jax"], "torch": AVAILABLE["torch"]}
    for kinds in AVAILABLE.values():
        assert "cpu" in kinds and set(kinds) <= set(DEVICE_KINDS)
    assert resolve_device("jax", "cpu").platform == "cpu"
    assert resolve_device("torch", "cpu").type == "cpu"


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


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError):
        resolve_device("jax", "npu")
    with pytest.raises(ValueError):
        resolve_device("tensorflow", "cpu")


def test_machine_info_records_threads_cpu_and_versions():
    info = machine_info("torch")
    assert info["threads"] >= 1 and info["cpu_count"] >= 1
    assert info["version_jax"] and info["version_torch"] and info["version_numpy"]
    assert info["cpu_name"]
