"""bench.roofline: named-device peaks follow the precision; accelerator peaks queue many kernels per sync."""

import time

import pytest

from bench import roofline
from bench.roofline import NAMED_DEVICES, TPU_BF16_PASSES


def test_float32_peaks_follow_the_precision_that_computes_them():
    h100, tpu = NAMED_DEVICES["h100"], NAMED_DEVICES["tpu_v4"]
    assert h100.peak_flops("float32", "highest") == h100.peak_flops_fp32  # true float32: the FP32 units
    assert h100.peak_flops("float32", "high") == h100.peak_flops("float32", "default") == h100.peak_flops_tf32
    assert h100.peak_flops("bfloat16", "highest") == h100.peak_flops_bf16  # precision is about float32 only
    for precision, passes in TPU_BF16_PASSES.items():  # a TPU runs float32 as bf16 passes
        assert tpu.peak_flops("float32", precision) == pytest.approx(tpu.peak_flops_bf16 / passes)
    phone = NAMED_DEVICES["phone_soc"]  # no TF32 mode: float32 at every precision
    assert phone.peak_flops("float32", "default") == phone.peak_flops_fp32


def test_a_compute_bound_prediction_is_slower_at_a_higher_precision():
    flops, nbytes = 1e12, 1e6
    fast = roofline.predict_latency_ms(flops, nbytes, "float32", "default")
    exact = roofline.predict_latency_ms(flops, nbytes, "float32", "highest")
    assert exact["tpu_v4"] == pytest.approx(6 * fast["tpu_v4"])
    assert exact["h100"] > fast["h100"]


def test_device_peaks_queue_many_kernels_and_wait_once_on_the_last():
    calls = {"kernels": 0, "syncs": []}

    def kernel():
        calls["kernels"] += 1
        return calls["kernels"]

    def sync(out):
        calls["syncs"].append(out)

    peaks = roofline.measure_device_peaks(("test", time.time()), kernel, kernel, sync, matmul_flops=1.0,
                                          copy_bytes=1.0, source="fake", kernels_per_sync=20)
    bursts = len(calls["syncs"])
    assert calls["kernels"] == 20 * bursts
    assert all(out % 20 == 0 for out in calls["syncs"])  # each sync waits on the burst's last kernel
    assert "20 kernels per sync" in peaks.source


def test_host_peaks_are_the_best_any_runtime_reaches_and_say_which(monkeypatch):
    from bench import adapters

    monkeypatch.setattr(roofline, "_CACHE", {})
    monkeypatch.setattr(roofline, "_numpy_rates", lambda: {
        "flops_per_s": 250e9, "read_bytes_per_s": 30e9, "copy_bytes_per_s": 42e9})
    rates = {"jax": {"flops_per_s": 380e9, "read_bytes_per_s": 35e9, "copy_bytes_per_s": 10e9},
             "torch": {"flops_per_s": 300e9, "read_bytes_per_s": 41e9, "copy_bytes_per_s": 40e9}}
    monkeypatch.setattr(adapters, "load", lambda fw: type("A", (), {"host_rates": staticmethod(
        lambda dtype, n, nbytes, fw=fw: rates[fw])}))
    peaks = roofline.host_peaks()
    assert peaks.flops_per_s == 380e9 and peaks.bytes_per_s == 42e9
    assert "matmul jax" in peaks.source and "bandwidth numpy copy" in peaks.source
    for figure in ("numpy 250 GFLOP/s", "jax 380 GFLOP/s", "torch 300 GFLOP/s"):
        assert figure in peaks.source


def test_a_runtime_that_cannot_measure_is_named_and_left_out(monkeypatch):
    from bench import adapters

    monkeypatch.setattr(roofline, "_CACHE", {})
    monkeypatch.setattr(roofline, "_numpy_rates", lambda: {
        "flops_per_s": 250e9, "read_bytes_per_s": 30e9, "copy_bytes_per_s": 42e9})

    def broken(dtype, n, nbytes):
        raise RuntimeError("no bfloat16 matmul here")

    monkeypatch.setattr(adapters, "load", lambda fw: type("A", (), {"host_rates": staticmethod(broken)}))
    peaks = roofline.host_peaks("bfloat16")
    assert peaks.flops_per_s == 250e9 and "no bfloat16 matmul here" in peaks.source


def test_the_bandwidth_probe_times_a_real_copy_and_read_and_gives_the_better_rate(monkeypatch):
    probe = roofline.BandwidthProbe(nbytes=8 * 2**20)
    try:
        assert probe.nbytes == 8 * 2**20 and probe.dst.sum() == probe.src.size  # the copy ran over every slice
        rate = probe.sample()
        assert 1e8 < rate < 1e13  # between 0.1 GB/s and 10 TB/s: a rate, not a time or a count
        times = iter([0.0, 0.004, 0.0, 0.001])  # copy 4 ms (2 x 8 MiB moved), read 1 ms (8 MiB)
        monkeypatch.setattr(roofline.time, "perf_counter", lambda: next(times))
        assert probe.sample() == pytest.approx(8 * 2**20 / 0.001)
    finally:
        probe.close()
