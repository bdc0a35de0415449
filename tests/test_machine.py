"""bench.machine: run-time device resolution, the one-line unavailable-device error, machine info, git."""

import subprocess
import sys
import time

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


def _pretend(monkeypatch, present):
    monkeypatch.setattr(machine, "probe_devices",
                        lambda frameworks=FRAMEWORKS: {fw: {k: f"fake {k}" for k in present[fw]} for fw in frameworks})


def test_a_named_framework_without_the_device_is_an_error_naming_what_each_has(monkeypatch):
    _pretend(monkeypatch, {"jax": ["cpu", "gpu"], "torch": ["cpu"]})
    assert machine.frameworks_on("gpu", ("jax",), named=True) == (("jax",), [])
    with pytest.raises(DeviceUnavailableError) as info:
        machine.frameworks_on("gpu", ("jax", "torch"), named=True)
    assert str(info.value) == ("device 'gpu' is not available to torch on this machine; "
                               "available: jax: cpu, gpu; torch: cpu")


def test_a_default_framework_without_the_device_is_skipped_with_how_to_enable_it(monkeypatch):
    _pretend(monkeypatch, {"jax": ["cpu", "tpu"], "torch": ["cpu"]})
    usable, skipped = machine.frameworks_on("tpu", ("jax", "torch"), named=False)
    assert usable == ("jax",)
    assert len(skipped) == 1 and "skipping torch on tpu" in skipped[0] and "torch_xla" in skipped[0]


def test_a_device_no_framework_has_is_an_error_even_by_default(monkeypatch):
    _pretend(monkeypatch, {"jax": ["cpu"], "torch": ["cpu"]})
    with pytest.raises(DeviceUnavailableError, match="available: jax: cpu; torch: cpu"):
        machine.frameworks_on("tpu", ("jax", "torch"), named=False)


def test_devices_are_probed_in_child_processes_so_the_parent_opens_none():
    code = ("import sys; from bench import machine; print(machine.available_devices()); "
            "print('jax' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=machine.REPO_ROOT, check=True).stdout.splitlines()
    assert "'cpu'" in out[0]
    assert out[1] == "False False"


def test_a_cpu_run_probes_no_framework_and_skips_one_not_installed(monkeypatch):
    def probe(frameworks=FRAMEWORKS):
        raise AssertionError("a CPU run started a device probe")

    monkeypatch.setattr(machine, "probe_devices", probe)
    real_find_spec = machine.importlib.util.find_spec
    monkeypatch.setattr(machine.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    usable, skipped = machine.frameworks_on("cpu", ("jax", "torch"), named=False)
    assert usable == ("jax",) and len(skipped) == 1 and skipped[0].startswith("skipping torch on cpu: torch sees no device")
    with pytest.raises(DeviceUnavailableError, match="not available to torch"):
        machine.frameworks_on("cpu", ("jax", "torch"), named=True)
    assert machine.run_device_name("cpu", ("jax",)) == machine.cpu_name()


def test_a_run_names_its_device_once_whichever_framework_is_more_specific(monkeypatch):
    monkeypatch.setattr(machine, "probe_devices", lambda frameworks=FRAMEWORKS: {
        "jax": {"cpu": "EPYC", "tpu": "TPU v5e"}, "torch": {"cpu": "EPYC", "tpu": "torch_xla TPU"}})
    assert machine.run_device_name("tpu", ("jax", "torch")) == "TPU v5e"
    assert machine.run_device_name("cpu", ("jax", "torch")) == machine.cpu_name()  # the CPU has one name
    assert machine.run_device_name("gpu", ("jax", "torch")) is None


def test_tpu_names_agree_between_jax_kinds_and_cloud_accelerator_types():
    for jax_kind, accelerator_type in (("TPU v5 lite", "v5litepod-8"), ("TPU v4", "v4-8"), ("TPU v6 lite", "v6e-4"),
                                       ("TPU v5", "v5p-8")):
        assert machine.TPU_NAMES.get(jax_kind, jax_kind) == machine.tpu_name_from_accelerator_type(accelerator_type)
    assert machine.tpu_name_from_accelerator_type(None) is None


def test_a_child_reports_its_own_peak_memory_not_its_parents():
    """ru_maxrss carries the parent's peak into a child started by vfork; the worker's column must not."""
    import numpy as np

    held = np.ones(1 << 27)  # 1 GiB resident in this process while it starts the child
    child = subprocess.run([sys.executable, "-c", "from bench.machine import peak_rss_bytes; print(peak_rss_bytes())"],
                           capture_output=True, text=True, check=True)
    assert held.sum() > 0 and 1 << 20 < int(child.stdout) < 1 << 29
    assert machine.peak_rss_bytes() > 1 << 30  # this process's own peak includes what it holds


def test_the_huge_page_share_is_the_anonymous_memory_on_huge_pages(tmp_path):
    rollup = tmp_path / "smaps_rollup"
    rollup.write_text("Rss:              4000 kB\nAnonymous:        3000 kB\nAnonHugePages:    2048 kB\n")
    assert machine.huge_page_share(str(rollup)) == pytest.approx(2048 / 3000)
    rollup.write_text("Rss:              4000 kB\nAnonymous:           0 kB\nAnonHugePages:       0 kB\n")
    assert machine.huge_page_share(str(rollup)) is None  # nothing anonymous: no share to speak of
    assert machine.huge_page_share(str(tmp_path / "absent")) is None  # no /proc (macOS, Windows)
    here = machine.huge_page_share()
    assert here is None or 0.0 <= here <= 1.0


@pytest.mark.skipif(machine.minor_page_faults() is None, reason="no getrusage")
def test_touching_fresh_pages_counts_page_faults_and_reading_them_again_does_not():
    import mmap

    size = 16 << 20
    with mmap.mmap(-1, size) as fresh:  # anonymous memory the kernel hands out on first touch
        before = machine.minor_page_faults()
        for offset in range(0, size, mmap.PAGESIZE):
            fresh[offset] = 1
        touched = machine.minor_page_faults() - before
        before = machine.minor_page_faults()
        assert sum(fresh[offset] for offset in range(0, size, mmap.PAGESIZE)) == size // mmap.PAGESIZE
        again = machine.minor_page_faults() - before
    # one fault per page, or per huge page where the kernel backs it with them (16 MiB = 8 of 2 MiB)
    assert touched >= size // (2 << 20) and again < touched


@pytest.mark.skipif(machine.cpu_ticks() is None, reason="no /proc/stat")
def test_a_cpu_watch_counts_another_process_but_not_ours():
    """Two watches over the same spell: one counts a busy child as another process's work, the other
    (the child's pid among its own) does not; the difference is the child's CPU time."""
    import time

    spin = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\nprint(1, flush=True)\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        start = time.perf_counter()
        others = machine.CpuWatch(lambda: ())
        ours = machine.CpuWatch(lambda: (child.pid,))
        assert child.stdout.readline() == b"1\n"  # it has spun its 0.5 s of CPU and waits, still alive
        seen_others, seen_ours = others.stop(), ours.stop()
        elapsed = time.perf_counter() - start
    finally:
        child.kill()
        child.wait()
    child_cores = seen_others["others_cpu_cores"] - seen_ours["others_cpu_cores"]
    assert 0.35 <= child_cores * elapsed <= 0.6  # the child's 0.5 s of CPU, to the clock tick
    assert 0.0 <= seen_ours["cpu_steal_share"] < 1.0


@pytest.mark.skipif(machine.cpu_ticks() is None, reason="no /proc/stat")
def test_process_ticks_grow_with_the_cpu_a_process_uses():
    import os
    import time

    before = machine.process_ticks(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    assert machine.process_ticks(os.getpid()) - before >= 0.15 * os.sysconf("SC_CLK_TCK")  # 0.2 s, to the tick
    assert machine.process_ticks(2**31 - 1) is None  # no such process


def test_simd_features_name_the_kernel_deciding_flags_the_cpu_has():
    assert machine.simd_features(frozenset({"fpu", "avx2", "fma", "avx512_vnni", "sse2"})) == "avx2 fma avx512_vnni"
    assert machine.simd_features(frozenset({"fp", "asimd", "sve"})) == "asimd sve"  # Arm's "Features"
    assert machine.simd_features(frozenset({"fpu"})).startswith("none of avx")
    here = machine.environment()["machine"]["cpu_features"]  # this machine's, recorded in every run
    assert here is None or here == machine.simd_features()


def test_the_cpu_speed_probe_keeps_the_median_of_its_repeats():
    probe = machine.CpuSpeedProbe()
    assert 0 < probe.sample() < 0.01  # 64 KiB of exp: microseconds, not a stall
    calls = []

    def kernel(x, out):  # one call in five stalls 20 ms (a preemption): the median ignores it
        calls.append(1)
        time.sleep(0.02 if len(calls) % 5 == 0 else 0.001)

    probe._exp = kernel
    assert 0.001 <= probe.sample() < 0.015
    assert len(calls) == machine.CPU_PROBE_REPEATS


def test_cpu_id_tells_apart_cpus_that_a_hypervisor_names_alike():
    block = "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n" \
            "model name\t: AMD EPYC\nstepping\t: 1\n"
    two_cores = block.format(n=0, family=26, model=2) + "\n" + block.format(n=1, family=99, model=99)
    first = machine.first_cpu_fields(two_cores)
    assert machine.parse_cpu_id(first, "32768K") == "AuthenticAMD family 26 model 2 stepping 1, L3 32768K"
    older = machine.first_cpu_fields(block.format(n=0, family=25, model=1))
    assert machine.parse_cpu_id(older) == "AuthenticAMD family 25 model 1 stepping 1"
    arm = "processor\t: 0\nBogoMIPS\t: 243.75\nCPU implementer\t: 0x41\nCPU variant\t: 0x1\nCPU part\t: 0xd40\n" \
          "CPU revision\t: 1\n"
    assert machine.parse_cpu_id(machine.first_cpu_fields(arm)) == "0x41 part 0xd40 variant 0x1 revision 1"
    assert machine.parse_cpu_id(machine.first_cpu_fields(None)) is None
    assert machine.parse_cpu_id(machine.first_cpu_fields("")) is None
    assert first["model name"] == "AMD EPYC"  # what cpu_name reads
