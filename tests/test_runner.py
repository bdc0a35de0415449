"""bench.runner: groups, interleaved rounds in a fresh random order, when rounds stop, failures of one job,
and the speedups with intervals; driven by in-process fake workers (bench_fakes) and a fake clock."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from bench import results, runner
from bench.config import load_config
from bench.results import RunWriter
from bench_fakes import FakeWorkers, install_clock

# No extra time: exactly `rounds` rounds unless a test asks for more.
SETTINGS = dataclasses.replace(load_config().quick, rounds=4, steps_per_round=3, round_warmup=0, warmup_rounds=0,
                               min_time_s=0.0, max_time_s=1e6, interval_target=0.0, timeout_s=5.0)

PLAN = runner.RunPlan(variants=("baseline", "practical"), frameworks=("jax", "torch"),
                      modes={"jax": ("jit",), "torch": ("eager", "compile")}, device="cpu", batches=(1, 64),
                      chunk_frames=6, dtype="float32")


def plan(variants=("baseline", "conv_lower", "practical"), frameworks=("jax",), batches=(1,), **kw):
    modes = {"jax": ("jit",), "torch": ("eager",), "onnxruntime": ("session",)}
    return runner.RunPlan(variants=tuple(variants), frameworks=frameworks, modes={fw: modes[fw] for fw in frameworks},
                          device="cpu", batches=batches, chunk_frames=6, dtype="float32", **kw)


def go(tmp_path, lab: FakeWorkers, the_plan=None, settings=SETTINGS, seed=0, monkeypatch=None):
    if monkeypatch is not None:
        install_clock(monkeypatch, lab)
    the_plan = the_plan or plan()
    summary = runner.run(the_plan, settings, RunWriter(tmp_path, {}), progress=False, pool=lab.pool(the_plan),
                         seed=seed)
    return summary, {(r["variant"], r["framework"], r["mode"], r["batch"]): r for r in summary.records}


def rounds_of(lab: FakeWorkers, group_size: int) -> list[list[str]]:
    """The time requests of one group cut into rounds of `group_size`."""
    keys = lab.time_keys()
    return [keys[i:i + group_size] for i in range(0, len(keys), group_size)]


# ---- the plan -------------------------------------------------------------------------------------


def test_jobs_walk_variants_then_frameworks_modes_batches():
    jobs = PLAN.jobs()
    assert len(jobs) == 2 * (1 + 2) * 2
    assert jobs[0] == runner.Job("baseline", "jax", "jit", 1)
    assert set(jobs) == {runner.Job(v, fw, m, b) for v in ("baseline", "practical")
                         for fw, m in (("jax", "jit"), ("torch", "eager"), ("torch", "compile")) for b in (1, 64)}


def test_groups_are_the_variants_of_one_framework_mode_and_batch():
    groups = PLAN.groups()
    assert len(groups) == 3 * 2
    for group in groups:
        assert [j.variant for j in group] == ["baseline", "practical"]
        assert len({(j.framework, j.mode, j.batch) for j in group}) == 1
    assert {(g[0].framework, g[0].mode, g[0].batch) for g in groups} == {
        (fw, m, b) for fw, m in (("jax", "jit"), ("torch", "eager"), ("torch", "compile")) for b in (1, 64)}


def test_both_sides_of_an_ab_run_share_a_group():
    sides = (runner.Side("base", "/a"), runner.Side("head", None))
    group = plan(variants=("practical",), sides=sides).groups()[0]
    assert [(j.variant, j.side) for j in group] == [("practical", "base"), ("practical", "head")]


def test_a_plan_from_the_config_resolves_the_selection_in_ladder_order():
    run = dataclasses.replace(load_config().run, variants="practical,conv*", frameworks=("torch",),
                              torch_modes=("eager", "compile"))
    the_plan = runner.RunPlan.from_config(run)
    assert the_plan.variants == ("conv_lower", "conv_lower_downsized", "practical")
    assert the_plan.modes == {"torch": ("eager", "compile")} and the_plan.batches == run.batches


# ---- interleaved rounds ---------------------------------------------------------------------------


def test_every_round_times_each_job_once_in_a_fresh_random_order(tmp_path, monkeypatch):
    variants = ("baseline", "conv_lower", "conv_lower_downsized", "practical")
    lab = FakeWorkers()
    settings = dataclasses.replace(SETTINGS, rounds=10)
    summary, recs = go(tmp_path, lab, plan(variants=variants), settings, seed=1, monkeypatch=monkeypatch)
    rounds = rounds_of(lab, len(variants))
    assert len(rounds) == 10
    for order in rounds:
        assert sorted(order) == sorted(f"{v}|jax|jit|1" for v in variants)  # each exactly once
    assert len({tuple(order) for order in rounds}) >= 5  # shuffled afresh, not one fixed order
    firsts = {order[0].split("|")[0] for order in rounds}
    assert len(firsts) >= 2  # no variant always goes first (it would always run on a cold cache)
    for r in summary.records:
        assert r["status"] == "ok" and r["rounds"] == 10 and r["iterations"] == 30
        assert r["steps_per_round"] == 3


def test_the_order_follows_the_seed(tmp_path, monkeypatch):
    variants = ("baseline", "conv_lower", "conv_lower_downsized", "practical")
    orders = []
    for n, seed in enumerate((7, 7, 8)):
        lab = FakeWorkers()
        go(tmp_path / str(n), lab, plan(variants=variants), seed=seed, monkeypatch=monkeypatch)
        orders.append(lab.time_keys())
    assert orders[0] == orders[1] and orders[0] != orders[2]


def test_groups_are_timed_one_after_the_other_never_mixed(tmp_path, monkeypatch):
    lab = FakeWorkers()
    the_plan = runner.RunPlan(variants=("baseline", "practical"), frameworks=("jax", "torch"),
                              modes={"jax": ("jit",), "torch": ("eager", "compile")}, device="cpu",
                              batches=(1, 64), chunk_frames=6, dtype="float32")
    summary, _ = go(tmp_path, lab, the_plan, monkeypatch=monkeypatch)
    settings_of = [tuple(k.split("|")[1:]) for k in lab.time_keys()]
    segments = [s for i, s in enumerate(settings_of) if i == 0 or s != settings_of[i - 1]]
    assert len(segments) == len(set(segments)) == 6  # each (framework, mode, batch) in one stretch
    for n, segment in enumerate(segments):
        stretch = lab.time_keys()[n * 8:(n + 1) * 8]
        assert {k.split("|")[0] for k in stretch} == {"baseline", "practical"}
        assert all(tuple(k.split("|")[1:]) == segment for k in stretch)
    assert len(summary.records) == 12 and all(r["status"] == "ok" for r in summary.records)


def test_a_slow_spell_of_the_machine_lands_on_every_variant_alike(tmp_path, monkeypatch):
    # The machine runs 3x slower for the second half of the run: measured one after the other, the
    # baseline would see only fast steps and practical only slow ones (a speedup of 0.83x, not 2.5x).
    lab = FakeWorkers(drift=lambda i: 1.0 if i < 20 else 3.0, noise=0.01)
    settings = dataclasses.replace(SETTINGS, rounds=20)
    _, recs = go(tmp_path, lab, plan(variants=("baseline", "practical")), settings, monkeypatch=monkeypatch)
    practical = recs[("practical", "jax", "jit", 1)]
    assert practical["speedup_vs_baseline"] == pytest.approx(2.5, rel=0.05)
    assert practical["speedup_ci_low"] <= 2.5 <= practical["speedup_ci_high"]
    assert practical["speedup_ci_high"] / practical["speedup_ci_low"] < 1.1  # paired rounds: drift cancels


def test_rounds_stop_at_rounds_once_min_time_is_met(tmp_path, monkeypatch):
    lab = FakeWorkers()
    settings = dataclasses.replace(SETTINGS, rounds=5, min_time_s=0.01, max_time_s=100.0)  # met in 1-2 rounds
    _, recs = go(tmp_path, lab, plan(), settings, monkeypatch=monkeypatch)
    assert len(lab.time_keys()) == 5 * 3
    assert all(r["rounds"] == 5 and r["timing_capped"] is False for r in recs.values())
    assert all(0 < r["cpu_probe_us"] < 1e5 for r in recs.values())  # sampled between the rounds' bursts


def test_warmup_rounds_are_run_interleaved_but_not_kept(tmp_path, monkeypatch):
    lab = FakeWorkers()
    settings = dataclasses.replace(SETTINGS, rounds=4, warmup_rounds=2)
    _, recs = go(tmp_path, lab, plan(variants=("baseline", "practical")), settings, monkeypatch=monkeypatch)
    assert len(lab.time_keys()) == (2 + 4) * 2  # every round times both, the first two included
    assert all(r["rounds"] == 4 for r in recs.values())
    assert all(len(rounds) == 4 for rounds in results.load_raw_rounds(tmp_path).values())


def test_rounds_go_on_past_rounds_until_every_variant_has_min_time(tmp_path, monkeypatch):
    lab = FakeWorkers()
    settings = dataclasses.replace(SETTINGS, rounds=3, min_time_s=0.2, max_time_s=100.0)
    _, recs = go(tmp_path, lab, plan(variants=("baseline", "practical")), settings, monkeypatch=monkeypatch)
    raw = results.load_raw_rounds(tmp_path)
    n = recs[("practical", "jax", "jit", 1)]["rounds"]
    # practical (4 ms x 3 steps a round) needs ~17 rounds for 0.2 s; the baseline's 10 ms steps fewer
    assert 15 <= n <= 19
    for key, rounds in raw.items():
        assert len(rounds) == n
    practical = raw["practical|jax|jit|cpu|1"]
    assert sum(map(sum, practical)) >= 0.2 > sum(map(sum, practical[:-1]))  # the first round that was enough
    assert all(r["timing_capped"] is False for r in recs.values())


def test_rounds_go_on_until_every_speedup_interval_is_within_the_target(tmp_path, monkeypatch):
    def rounds_and_widths(target):
        lab = FakeWorkers(noise=0.25)
        settings = dataclasses.replace(SETTINGS, rounds=6, interval_target=target, max_time_s=100.0)
        _, recs = go(tmp_path / str(target), lab, plan(), settings, monkeypatch=monkeypatch)
        widths = [max(r["speedup_ci_high"] / r["speedup_vs_baseline"] - 1, 1 - r["speedup_ci_low"] / r["speedup_vs_baseline"])
                  for r in recs.values() if r["variant"] != "baseline"]
        assert not any(r["timing_capped"] for r in recs.values())
        return recs[("baseline", "jax", "jit", 1)]["rounds"], widths

    plain_rounds, plain_widths = rounds_and_widths(0.0)
    assert plain_rounds == 6 and max(plain_widths) > 0.08  # noisy steps: six rounds leave a wide interval
    rounds, widths = rounds_and_widths(0.08)
    assert rounds > 6 and max(widths) <= 0.08


def test_in_bench_ab_each_variants_two_sides_are_a_compared_pair():
    sides = (runner.Side("base", "/a"), runner.Side("head", None))
    group = runner._Group(plan(variants=("baseline", "practical"), sides=sides).groups()[0])
    group.records = {job: runner.job_identity(job, plan(sides=sides)) for job in group.jobs}
    group.alive = list(group.jobs)
    pairs = {(a.variant, a.side, b.variant, b.side) for a, b in runner._compared_pairs(group)}
    assert pairs == {("baseline", "base", "practical", "base"), ("baseline", "head", "practical", "head"),
                     ("baseline", "base", "baseline", "head"), ("practical", "base", "practical", "head")}


def test_rounds_stop_at_max_time_and_say_so(tmp_path, monkeypatch):
    lab = FakeWorkers()
    settings = dataclasses.replace(SETTINGS, rounds=3, min_time_s=100.0, max_time_s=0.5)
    _, recs = go(tmp_path, lab, plan(variants=("baseline", "practical")), settings, monkeypatch=monkeypatch)
    n = recs[("baseline", "jax", "jit", 1)]["rounds"]
    per_round = 3 * (10.0 + 4.0) * (1 + 1 / 16) / 1e3  # fake seconds one round takes
    assert n > 3 and abs(n - math.ceil(0.5 / per_round)) <= 1
    assert lab.clock == pytest.approx(n * per_round, rel=0.05)
    assert all(r["timing_capped"] is True and r["status"] == "ok" for r in recs.values())


def test_the_max_time_cap_never_cuts_the_minimum_rounds(tmp_path, monkeypatch):
    lab = FakeWorkers()
    settings = dataclasses.replace(SETTINGS, rounds=6, min_time_s=100.0, max_time_s=1e-6)
    _, recs = go(tmp_path, lab, plan(variants=("baseline", "practical")), settings, monkeypatch=monkeypatch)
    assert all(r["rounds"] == 6 and r["timing_capped"] for r in recs.values())


def test_raw_times_on_disk_are_the_rounds_the_workers_answered(tmp_path, monkeypatch):
    lab = FakeWorkers()
    _, recs = go(tmp_path, lab, plan(variants=("baseline", "practical")), monkeypatch=monkeypatch)
    raw = results.load_raw_rounds(tmp_path)
    assert set(raw) == {"baseline|jax|jit|cpu|1", "practical|jax|jit|cpu|1"}
    assert all(len(r) == SETTINGS.rounds and all(len(b) == SETTINGS.steps_per_round for b in r)
               for r in raw.values())
    base = recs[("baseline", "jax", "jit", 1)]
    import numpy as np

    assert base["latency_ms_p50"] == pytest.approx(1e3 * np.median([t for b in raw["baseline|jax|jit|cpu|1"]
                                                                     for t in b]))


# ---- speedups and their intervals -----------------------------------------------------------------


def test_a_baseline_listed_last_still_fills_the_speedups_and_intervals_on_disk(tmp_path, monkeypatch):
    lab = FakeWorkers()
    the_plan = plan(variants=("practical", "baseline"))
    summary, _ = go(tmp_path, lab, the_plan, monkeypatch=monkeypatch)
    on_disk = json.loads((tmp_path / "results.json").read_text())["records"]
    practical = next(r for r in on_disk if r["variant"] == "practical")
    baseline = next(r for r in on_disk if r["variant"] == "baseline")
    assert practical["speedup_vs_baseline"] == pytest.approx(2.5, rel=0.05)
    assert practical["speedup_ci_low"] < practical["speedup_vs_baseline"] < practical["speedup_ci_high"]
    assert baseline["speedup_vs_baseline"] == pytest.approx(1.0)
    assert baseline.get("speedup_ci_low") is None and baseline.get("speedup_ci_high") is None
    assert practical["latency_ms_p50_ci_low"] < practical["latency_ms_p50"] < practical["latency_ms_p50_ci_high"]
    by_variant = {r["variant"]: r for r in summary.records}
    assert by_variant["practical"]["speedup_vs_baseline"] == practical["speedup_vs_baseline"]


def test_with_too_few_rounds_there_is_no_interval_and_the_noise_line_says_why(tmp_path, monkeypatch):
    lab = FakeWorkers()
    settings = dataclasses.replace(SETTINGS, rounds=2)
    summary, recs = go(tmp_path, lab, plan(variants=("baseline", "practical")), settings, monkeypatch=monkeypatch)
    practical = recs[("practical", "jax", "jit", 1)]
    assert practical["speedup_vs_baseline"] == pytest.approx(2.5, rel=0.05)
    assert practical["speedup_ci_low"] is None and practical["latency_ms_p50_ci_low"] is None
    line = summary.noise_line()
    assert line and "fewer than 3 rounds" in line and "practical jax b=1" in line


# ---- failures of one job --------------------------------------------------------------------------


def test_a_worker_that_dies_mid_rounds_fails_only_its_record(tmp_path, monkeypatch):
    variants = ("baseline", "conv_lower", "practical")
    lab = FakeWorkers(die={"conv_lower": ("time", 2, "worker killed by SIGSEGV")})
    settings = dataclasses.replace(SETTINGS, rounds=5)
    _, recs = go(tmp_path, lab, plan(variants=variants, batches=(1, 64)), settings, monkeypatch=monkeypatch)
    dead = recs[("conv_lower", "jax", "jit", 1)]
    assert dead["status"] == "failed" and dead["error"] == "worker killed by SIGSEGV"
    assert dead["latency_ms_p50"] is None and dead["speedup_vs_baseline"] is None
    sizes = [len(r) for r in rounds_of_group(lab, batch=1)]
    assert sizes == [3, 3, 2, 2, 2]  # the dead job left the rounds; the others went on
    for variant in ("baseline", "practical"):
        assert recs[(variant, "jax", "jit", 1)]["status"] == "ok"
        assert recs[(variant, "jax", "jit", 1)]["rounds"] == 5
    # the next group starts a fresh worker for conv_lower and measures it
    again = recs[("conv_lower", "jax", "jit", 64)]
    assert again["status"] == "ok" and again["worker"] != dead.get("worker")
    assert all(w.closed or w.dead for w in lab.workers)  # no worker outlives the run


def rounds_of_group(lab: FakeWorkers, batch: int) -> list[list[str]]:
    """The rounds of one batch's group, cut where a job repeats (a new round began)."""
    out: list[list[str]] = []
    for key in (k for k in lab.time_keys() if k.endswith(f"|{batch}")):
        if not out or key in out[-1]:
            out.append([])
        out[-1].append(key)
    return out


def test_a_failed_prepare_a_python_error_and_deaths_while_building_or_warming_each_fail_one_record(tmp_path, monkeypatch):
    variants = ("baseline", "conv_lower", "conv_lower_downsized", "practical", "practical_cascade")
    lab = FakeWorkers(fail=("conv_lower",), raise_for=("conv_lower_downsized",),
                      die={"practical_cascade": ("prepare", 1, "timed out after 5 s"),
                           "practical": ("warm", 1, "worker killed by SIGSEGV")})
    summary, recs = go(tmp_path, lab, plan(variants=variants), monkeypatch=monkeypatch)
    status = {k[0]: (r["status"], r["error"]) for k, r in recs.items()}
    assert status == {"baseline": ("ok", None), "practical": ("failed", "worker killed by SIGSEGV"),
                      "conv_lower": ("failed", "FloatingPointError: NaN in output"),
                      "conv_lower_downsized": ("failed", "RuntimeError: adapter bug for conv_lower_downsized"),
                      "practical_cascade": ("failed", "timed out after 5 s")}
    assert {k.split("|")[0] for k in lab.time_keys()} == {"baseline"}  # failed jobs are not timed
    assert all(r["variant"] and r["batch"] == 1 and r["device"] == "cpu" for r in summary.records)
    assert "4 of 5 measurements failed" in summary.failure_line()
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert len(on_disk["records"]) == 5 and on_disk["meta"]["status"] == "complete"


class ScriptedProbe:
    """roofline.BandwidthProbe with set samples: 20, 30, 40, ... GB/s, one per call."""
    samples: list[float] = []

    def __init__(self):
        ScriptedProbe.samples = []

    def sample(self) -> float:
        ScriptedProbe.samples.append((20 + 10 * len(ScriptedProbe.samples)) * 1e9)
        return ScriptedProbe.samples[-1]

    def close(self) -> None:
        pass


def test_sessions_are_built_together_then_warmed_one_at_a_time_and_the_first_measures_the_peaks(tmp_path, monkeypatch):
    lab = FakeWorkers()
    monkeypatch.setattr(runner.roofline, "BandwidthProbe", ScriptedProbe)
    settings = dataclasses.replace(SETTINGS, prepare_workers=2, roofline=True)
    summary, _ = go(tmp_path, lab, plan(batches=(1, 64)), settings=settings)
    assert all(r["status"] == "ok" for r in summary.records)
    assert all(call["warm"] is False for call in lab.calls)  # the steps run in `warm`, not while building
    cmds = [(cmd, key.split("|")[3]) for _, cmd, key in lab.requests if cmd in ("prepare", "warm", "time")]
    for batch in ("1", "64"):
        group = [cmd for cmd, b in cmds if b == batch]
        assert group[:6] == ["prepare"] * 3 + ["warm"] * 3 and set(group[6:]) == {"time"}
    assert [peaks is None for _, peaks in lab.warmed_with] == [True] + [False] * 5  # measured once, alone
    assert all(r["peaks_source"].endswith("at the run's start 10.0, fake") for r in summary.records)
    assert all(r["roofline_fraction"] > 0 and r["peak_flops_per_s"] == 1e11 for r in summary.records)


def test_every_framework_builds_up_to_prepare_workers_sessions_at_once(tmp_path):
    lab = FakeWorkers()
    settings = dataclasses.replace(SETTINGS, prepare_workers=2)
    summary, _ = go(tmp_path, lab, plan(frameworks=("jax", "onnxruntime", "torch")), settings=settings)
    assert all(r["status"] == "ok" for r in summary.records)
    assert lab.most_built_at_once == {"jax": 2, "onnxruntime": 2, "torch": 2}


def test_a_cpu_roofline_uses_the_bandwidth_sampled_in_its_own_groups_rounds(tmp_path, monkeypatch):
    lab = FakeWorkers()
    monkeypatch.setattr(runner.roofline, "BandwidthProbe", ScriptedProbe)
    settings = dataclasses.replace(SETTINGS, roofline=True, warmup_rounds=1)
    summary, _ = go(tmp_path, lab, plan(batches=(1, 64)), settings=settings)
    by_batch = {b: [r for r in summary.records if r["batch"] == b] for b in (1, 64)}
    rounds = {b: rs[0]["rounds"] for b, rs in by_batch.items()}
    assert len(ScriptedProbe.samples) == rounds[1] + rounds[64]  # one per kept round, none in warm-up rounds
    first, second = ScriptedProbe.samples[:rounds[1]], ScriptedProbe.samples[rounds[1]:]
    raw = json.loads((tmp_path / "raw_times.json").read_text())
    for batch, samples in ((1, first), (64, second)):
        # samples 20, 30, 40, ... GB/s: the 90th percentile (linear) is 90% of the way from the first to the last
        p90 = samples[0] + 0.9 * (samples[-1] - samples[0])
        for r in by_batch[batch]:
            assert r["peak_bytes_per_s"] == pytest.approx(p90) and r["peak_bytes_per_s_start"] == 1e10
            bound_ms = 1e3 * max(r["flops_per_step"] / 1e11, r["bytes_per_step"] / p90)
            assert r["roofline_bound_ms"] == pytest.approx(bound_ms)
            assert r["roofline_fraction"] == pytest.approx(bound_ms / r["latency_ms_p50"])
            assert f"the 90th percentile of {len(samples)} numpy copy/read samples" in r["peaks_source"]
            assert raw["bandwidth"][results.raw_key(r)] == samples  # every sample kept in the run folder


def test_no_probe_without_a_roofline(tmp_path, monkeypatch):
    lab = FakeWorkers()
    monkeypatch.setattr(runner.roofline, "BandwidthProbe", ScriptedProbe)
    ScriptedProbe.samples = []
    summary, _ = go(tmp_path, lab, plan(), settings=dataclasses.replace(SETTINGS, roofline=False))
    assert ScriptedProbe.samples == [] and all(r.get("peak_bytes_per_s_start") is None for r in summary.records)


def test_every_live_session_is_dropped_and_unneeded_workers_retire(tmp_path, monkeypatch):
    lab = FakeWorkers()
    the_plan = runner.RunPlan(variants=("baseline", "practical"), frameworks=("jax", "torch"),
                              modes={"jax": ("jit",), "torch": ("eager",)}, device="cpu", batches=(1, 64),
                              chunk_frames=6, dtype="float32")
    go(tmp_path, lab, the_plan, monkeypatch=monkeypatch)
    drops = [key for _, cmd, key in lab.requests if cmd == "drop"]
    assert sorted(drops) == sorted(runner.session_key(j) for j in the_plan.jobs())
    assert len(lab.workers) == 4  # one per (variant, framework), shared by the batches
    first_torch = next(i for i, (_, _, key) in enumerate(lab.requests) if key and "|torch|" in key)
    jax_workers = [w for w in lab.workers if any(wid == w.id and "|jax|" in key for wid, _, key in lab.requests)]
    assert len(jax_workers) == 2 and all(w.closed_at <= first_torch for w in jax_workers)  # retired early
    assert all(w.closed for w in lab.workers)


def test_an_interrupted_run_keeps_the_finished_groups_and_says_interrupted(tmp_path, monkeypatch):
    lab = FakeWorkers(interrupt_at=SETTINGS.rounds * 2 + 1)  # the first burst of the second group
    install_clock(monkeypatch, lab)
    the_plan = plan(variants=("baseline", "practical"), batches=(1, 64))
    writer = RunWriter(tmp_path, {})
    with pytest.raises(KeyboardInterrupt):
        runner.run(the_plan, SETTINGS, writer, progress=False, pool=lab.pool(the_plan))
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["status"] == "interrupted"
    ok = [(r["variant"], r["batch"]) for r in data["records"] if r["status"] == "ok"]
    assert sorted(ok) == [("baseline", 1), ("practical", 1)]
    assert set(results.load_raw_rounds(tmp_path)) >= {"baseline|jax|jit|cpu|1", "practical|jax|jit|cpu|1"}
    assert all(w.closed or w.dead for w in lab.workers)
    assert any(w.killed for w in lab.workers)  # the live ones stopped at once, not asked and waited for


def test_a_run_that_crashes_is_not_marked_complete(tmp_path, monkeypatch):
    lab = FakeWorkers()
    install_clock(monkeypatch, lab)
    the_plan = plan(variants=("baseline", "practical"))

    def broken(records, rounds=None):
        raise RuntimeError("a bug in the speedup code")

    monkeypatch.setattr(runner.table, "fill_speedups", broken)
    with pytest.raises(RuntimeError):
        runner.run(the_plan, SETTINGS, RunWriter(tmp_path, {}), progress=False, pool=lab.pool(the_plan))
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["status"] != "complete"


# ---- the noise line and the metadata --------------------------------------------------------------


def _ok(variant, p50=10.0, lo=9.9, hi=10.1, **extra):
    return {"variant": variant, "framework": "jax", "batch": 1, "status": "ok", "latency_ms_p50": p50,
            "latency_ms_p50_ci_low": lo, "latency_ms_p50_ci_high": hi, "rounds": 10, **extra}


def test_the_noise_line_names_only_the_wide_rows_and_the_likely_cause(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    records = [_ok("baseline"), _ok("practical", 4.0, 3.0, 5.0, load_avg_1m=3.5, usable_cores=2),
               _ok("conv_lower", speedup_vs_baseline=2.0, speedup_ci_low=1.5, speedup_ci_high=2.1),
               {"variant": "performer", "framework": "jax", "batch": 1, "status": "failed"}]
    line = runner.noise_line(records, busy=True)
    assert line.startswith("noisy: 2 rows")
    assert "practical jax b=1 (+-25%)" in line and "conv_lower jax b=1 (+-25%)" in line
    assert "baseline" not in line and "performer" not in line
    assert "other processes were using the CPU" in line
    assert "other processes" not in runner.noise_line(records)  # a load average alone is not a busy machine
    assert "OMP_WAIT_POLICY" not in line  # no PyTorch row among the wide ones
    torch_row = _ok("practical", 4.0, 3.0, 5.0) | {"framework": "torch"}
    assert "PyTorch rows: OMP_WAIT_POLICY=PASSIVE" in runner.noise_line([torch_row], busy=True)
    assert runner.noise_line([_ok("baseline")]) is None
    assert "CPU clock changed" in runner.noise_line(records[1:2], clock_changed=True)
    assert "max_time_s" in runner.noise_line([_ok("practical", 4.0, 3.0, 5.0, timing_capped=True)])


def test_the_speed_line_names_the_groups_timed_at_the_slowest_and_fastest_cpu_speed():
    def row(framework, batch, probe_us, status="ok", mode="eager"):
        return {**_ok("practical"), "framework": framework, "mode": mode, "batch": batch, "cpu_probe_us": probe_us,
                "status": status}

    moved = [row("jax", 1, 31.0, mode="jit"), row("jax", 1, 31.0, mode="jit"), row("torch", 1, 24.0),
             row("torch", 64, 22.0), row("onnxruntime", 1, 50.0, status="failed")]
    line = runner.speed_line(moved)
    assert "22.0 us in torch/eager b=64 and 31.0 us in jax/jit b=1 (1.41x)" in line
    assert runner.speed_line(moved[:2] + [row("torch", 64, 29.0)]) is None  # 1.07x: within CPU_SPEED_MOVED
    # two modes at one batch are two groups (timed apart), not one
    assert "torch/eager b=1 and 31.0 us in torch/compile b=1" in runner.speed_line(
        [row("torch", 1, 22.0), row("torch", 1, 31.0, mode="compile")])
    assert runner.speed_line(moved[:2]) is None  # one group: nothing to compare
    assert runner.speed_line([_ok("practical")]) is None  # records from before the probe


def test_run_metadata_records_the_machine_the_code_and_the_config():
    meta = runner.run_metadata({"run": {}}, machine_tag="box", command=["bench", "run"])
    assert meta["command"] == "bench run" and meta["machine_tag"] == "box" and meta["status"] == "running"
    assert {"machine", "versions", "threads", "git", "config", "started_utc"} <= set(meta)


def test_on_a_tpu_one_worker_per_framework_holds_every_session_and_frameworks_take_turns(tmp_path):
    lab = FakeWorkers()
    the_plan = dataclasses.replace(plan(frameworks=("jax", "torch"), batches=(1, 64)), device="tpu")
    summary, records = go(tmp_path, lab, the_plan)
    assert all(r["status"] == "ok" for r in summary.records) and len(records) == 3 * 2 * 2
    assert len(lab.workers) == 2  # one process per framework, never one per variant
    by_worker = {w.id: {key.split("|")[1] for wid, _, key in lab.requests if wid == w.id and key} for w in lab.workers}
    assert sorted(map(sorted, by_worker.values())) == [["jax"], ["torch"]]
    jax_worker, torch_worker = lab.workers
    first_torch = next(i for i, (wid, _, _) in enumerate(lab.requests) if wid == torch_worker.id)
    assert jax_worker.closed_at is not None and jax_worker.closed_at <= first_torch  # never both open


def test_precision_travels_to_every_worker_and_into_every_record(tmp_path):
    lab = FakeWorkers()
    summary, _ = go(tmp_path, lab, plan(precision="high"))
    assert {c["precision"] for c in lab.calls} == {"high"}
    assert {r["precision"] for r in summary.records} == {"high"}


def test_profiling_after_the_rounds_adds_the_classes_and_keeps_every_op_in_the_folder(tmp_path):
    from bench import results

    lab = FakeWorkers(profile_fails=("conv_lower",))
    the_plan = plan()
    summary = runner.run(the_plan, dataclasses.replace(SETTINGS, profile=True, profile_steps=3),
                         RunWriter(tmp_path, {}), progress=False, pool=lab.pool(the_plan), seed=0)
    by_variant = {r["variant"]: r for r in summary.records}
    assert all(r["status"] == "ok" for r in summary.records)  # a failed profile never costs the timing
    assert by_variant["baseline"]["time_ms_ffn"] > 0 and by_variant["baseline"]["profile_source"] == "fake"
    assert by_variant["conv_lower"]["profile_error"] == "RuntimeError: profiler unavailable"
    assert by_variant["conv_lower"].get("time_ms_ffn") is None
    import gzip
    import json

    saved = json.loads(gzip.decompress(results.profile_path(tmp_path, by_variant["baseline"]).read_bytes()))
    assert saved["key"].startswith("baseline|") and saved["ops"] and saved["classes"]["ffn"]["measured_ms"] > 0
    assert not results.profile_path(tmp_path, by_variant["conv_lower"]).exists()
    cmds = [cmd for _, cmd, _ in lab.requests]
    assert cmds.index("profile") > max(i for i, c in enumerate(cmds) if c == "time")  # after every round


def test_each_record_says_what_else_used_the_cpu_during_its_groups_rounds(tmp_path, monkeypatch):
    class Busy:  # what machine.CpuWatch would report with another process spinning on one core
        def __init__(self, own_pids):
            self.pids = own_pids

        def stop(self):
            return {"others_cpu_cores": 1.0, "cpu_steal_share": 0.03}

    monkeypatch.setattr(runner.machine, "CpuWatch", Busy)
    _, records = go(tmp_path, FakeWorkers())
    assert {(r["others_cpu_cores"], r["cpu_steal_share"]) for r in records.values()} == {(1.0, 0.03)}


def test_the_noise_line_names_other_processes_and_steal_during_the_rounds(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    quiet = _ok("practical", 4.0, 3.0, 5.0, others_cpu_cores=0.1, cpu_steal_share=0.0)
    assert "other processes" not in runner.noise_line([quiet]) and "steal" not in runner.noise_line([quiet])
    busy = _ok("practical", 4.0, 3.0, 5.0, others_cpu_cores=1.04, cpu_steal_share=0.0) | {"framework": "torch"}
    line = runner.noise_line([busy, quiet])
    assert "other processes were using the CPU during the rounds of 1 of them (up to 1.0 cores)" in line
    assert "OMP_WAIT_POLICY=PASSIVE" in line
    both = runner.noise_line([busy], busy=True)
    assert "when the run started and during the rounds of 1 of them" in both
    stolen = runner.noise_line([_ok("practical", 4.0, 3.0, 5.0, cpu_steal_share=0.07)])
    assert "the hypervisor took up to 7% of the CPU time (steal)" in stolen
    assert "page faults" not in runner.noise_line([_ok("practical", 4.0, 3.0, 5.0, page_faults_per_step=260.0)])
    faulting = runner.noise_line([_ok("practical", 4.0, 3.0, 5.0, page_faults_per_step=54936.0)])
    assert "steps took memory fresh from the kernel (up to 54,936 page faults a step" in faulting
    assert "GLIBC_TUNABLES" in faulting


# ---- threads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("setting, usable, busy, threads", [
    ("auto", 2, None, 2), ("auto", 2, 0.3, 2),  # quiet (or unreadable): every core
    ("auto", 2, 0.96, 1), ("auto", 2, 1.9, 1),  # one busy process: one thread; never fewer than one
    ("auto", 8, 2.6, 5),
    (3, 2, 0.96, 3), (1, 8, None, 1),  # a number is used as given
])
def test_workers_compute_with_the_cores_other_processes_leave_free(setting, usable, busy, threads):
    assert runner.worker_threads(setting, usable, busy) == threads


def test_the_threads_line_says_when_and_why_workers_had_fewer_threads_than_cores():
    summary = runner.RunSummary(busy_before=0.96, threads=1, usable_cores=2)
    assert summary.threads_line().startswith("threads: each worker computed with 1 thread(s) on as many of the 2 cores, "
                                             "other processes kept 1.0 cores busy when the run started")
    assert "as asked" in runner.RunSummary(busy_before=0.1, threads=1, usable_cores=2).threads_line()
    assert runner.RunSummary(busy_before=0.1, threads=2, usable_cores=2).threads_line() is None


def test_a_run_starts_its_workers_with_the_threads_it_chose(tmp_path, monkeypatch):
    lab = FakeWorkers()
    started = []
    real_start = lab.start
    lab.start = lambda worker_id, **kw: started.append(kw["threads"]) or real_start(worker_id, **kw)
    monkeypatch.setattr(runner.machine, "busy_cores", lambda: 1.0)
    monkeypatch.setattr(runner.machine, "usable_cores", lambda: 2)
    summary, _ = go(tmp_path, lab, plan(), monkeypatch=monkeypatch)
    assert started and set(started) == {1} and summary.threads == 1

