"""bench.results: atomic files rewritten after every record, raw step times per interleaved round, and\nreading/merging run folders."""

from __future__ import annotations

import json
import math
import os
import stat

import pandas as pd
import pytest

from bench import compare, report, results
from bench.results import RunWriter, atomic_write_text, load_raw_times, load_run, load_runs
from bench.schema import RECORD_KEYS

META = {"machine_tag": None, "config": {}}


def record(variant="baseline", framework="jax", batch=1, device="cpu", p50=10.0, **extra):
    rec = {"variant": variant, "framework": framework, "mode": "jit" if framework == "jax" else "eager",
           "device": device, "device_name": f"{device} host", "dtype": "float32", "batch": batch,
           "chunk_frames": 6, "latency_ms_p50": p50, "status": "ok", "error": None}
    rec.update(extra)
    return rec


def test_atomic_write_replaces_whole_files_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600


def test_a_write_that_dies_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(path, "complete old content\n")

    def killed(src, dst):
        raise KeyboardInterrupt  # e.g. Ctrl-C between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "half")
    monkeypatch.undo()
    assert path.read_text() == "complete old content\n"
    assert os.listdir(tmp_path) == ["results.json"]


def test_every_file_is_rewritten_after_every_record(tmp_path):
    writer = RunWriter(tmp_path / "run", META, table_md=report.run_table_markdown)
    run = tmp_path / "run"
    assert json.loads((run / "results.json").read_text())["records"] == []
    for n, variant in enumerate(["baseline", "practical"], start=1):
        writer.add(record(variant), [[0.01, 0.011], [0.012]])
        data = json.loads((run / "results.json").read_text())
        assert len(data["records"]) == n
        assert len(pd.read_csv(run / "results.csv")) == n
        assert variant in (run / "table.md").read_text()
        assert len(load_raw_times(run)) == n
    writer.finish(threads={"jax": 2})
    meta = json.loads((run / "results.json").read_text())["meta"]
    assert meta["status"] == "complete" and meta["finished_utc"] and meta["threads"] == {"jax": 2}
    assert sorted(p.name for p in run.iterdir()) == ["raw_times.json", "results.csv", "results.json", "table.md"]


def test_json_is_strict_nan_becomes_null(tmp_path):
    writer = RunWriter(tmp_path, META)
    writer.add(record(latency_ms_p90=float("nan"), rtf=float("inf")))
    text = (tmp_path / "results.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["records"][0]["latency_ms_p90"] is None and data["records"][0]["rtf"] is None


def test_load_run_gives_meta_and_a_frame_with_every_contract_column(tmp_path):
    writer = RunWriter(tmp_path / "r", {**META, "machine_tag": "box"})
    writer.add(record(), [[0.01], [0.02]])
    meta, df = load_run(tmp_path / "r")
    assert meta["machine_tag"] == "box"
    assert set(RECORD_KEYS) <= set(df.columns) and df.loc[0, "run"] == "r"
    assert load_raw_times(tmp_path / "r") == {"baseline|jax|jit|cpu|1": [0.01, 0.02]}


def test_raw_times_keep_each_interleaved_round(tmp_path):
    rounds = [[0.010, 0.011, 0.012], [0.020, 0.021, 0.022], [0.013, 0.014, 0.015]]
    writer = RunWriter(tmp_path, META)
    writer.add(record(), rounds)
    writer.add(record("practical", revision="head"), [[0.004], [0.005, 0.006]])  # a bench ab side
    writer.add(record("conv_lower", status="failed", latency_ms_p50=None), [])
    writer.add(record("performer"))  # no times at all
    data = json.loads((tmp_path / "raw_times.json").read_text())
    assert data["layout"] == "rounds" and data["unit"] == "s"
    assert results.load_raw_rounds(tmp_path) == {"baseline|jax|jit|cpu|1": rounds,
                                                 "practical|jax|jit|cpu|1|head": [[0.004], [0.005, 0.006]],
                                                 "conv_lower|jax|jit|cpu|1": []}
    assert load_raw_times(tmp_path)["baseline|jax|jit|cpu|1"] == [t for r in rounds for t in r]


def test_an_old_flat_raw_times_file_reads_as_one_round_per_step(tmp_path):
    RunWriter(tmp_path, META).add(record(), [[0.5]])
    (tmp_path / "raw_times.json").write_text(json.dumps(
        {"unit": "s", "key": ["variant", "framework", "mode", "device", "batch"],
         "times": {"baseline|jax|jit|cpu|1": [0.01, 0.02, 0.03]}}))
    assert results.load_raw_rounds(tmp_path) == {"baseline|jax|jit|cpu|1": [[0.01], [0.02], [0.03]]}
    assert load_raw_times(tmp_path) == {"baseline|jax|jit|cpu|1": [0.01, 0.02, 0.03]}


def test_a_run_without_raw_times_reads_as_none(tmp_path):
    RunWriter(tmp_path, META).add(record())
    (tmp_path / "raw_times.json").unlink()
    assert results.load_raw_rounds(tmp_path) == {} and load_raw_times(tmp_path) == {}


def test_merging_two_folders_keeps_each_rows_device(tmp_path):
    for name, device in (("cpu-host", "cpu"), ("tpu-host", "tpu")):
        writer = RunWriter(tmp_path / name, META)
        writer.add(record("baseline", device=device))
        writer.add(record("practical", device=device, p50=4.0))
    metas, df = load_runs([tmp_path / "cpu-host", tmp_path / "tpu-host"])
    assert len(metas) == 2 and len(df) == 4
    assert df.groupby("run")["device"].agg(set).to_dict() == {"cpu-host": {"cpu"}, "tpu-host": {"tpu"}}
    table = report.paper_table(df)  # the merged frame is what `bench report` renders
    assert "device" in table.columns or "device" in table.index.names


def test_folders_with_the_same_name_stay_apart(tmp_path):
    for parent in ("a", "b"):
        RunWriter(tmp_path / parent / "run", META).add(record())
    _, df = load_runs([tmp_path / "a" / "run", tmp_path / "b" / "run"])
    assert df["run"].nunique() == 2


def test_not_a_run_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(results.ResultsError, match="no such run folder"):
        load_run(tmp_path / "missing")
    with pytest.raises(results.ResultsError, match="not a run folder"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(results.ResultsError) as e:
        load_run(tmp_path)
    assert "\n" not in str(e.value)


def test_compare_finds_the_raw_times_of_every_row_it_stores(tmp_path):
    for name in ("a", "b"):
        writer = RunWriter(tmp_path / name, META)
        for variant, batch in (("baseline", 1), ("baseline", 64), ("practical", 64)):
            writer.add(record(variant, batch=batch), [[0.010, 0.011], [0.012, 0.010]])
    (_, df_a), (_, df_b) = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    json.loads((tmp_path / "a" / "raw_times.json").read_text())  # strict JSON, string keys
    out = compare.compare_runs(df_a, load_raw_times(tmp_path / "a"), df_b, load_raw_times(tmp_path / "b"))
    assert len(out) == 3 and set(out["mark"]) == {"~"}  # '?' would mean a row lost its raw times


def test_a_folder_that_cannot_be_written_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(results.ResultsError, match="cannot write a run folder here") as e:
        RunWriter(tmp_path / "file" / "run", META)
    assert "\n" not in str(e.value)


def test_table_md_survives_records_the_report_cannot_render(tmp_path, monkeypatch):
    def broken(df, fmt):
        raise KeyError("a reporting bug")

    monkeypatch.setattr(report, "render_table", broken)
    writer = RunWriter(tmp_path, META, table_md=report.run_table_markdown)
    writer.add(record(status="failed", error="boom", latency_ms_p50=None))
    text = (tmp_path / "table.md").read_text()
    assert "paper table unavailable" in text and "| baseline | jax | jit | 1 |" in text
    assert math.isnan(pd.read_csv(tmp_path / "results.csv").loc[0, "latency_ms_p50"])


def test_a_raw_times_file_that_is_not_an_object_is_a_results_error(tmp_path):
    RunWriter(tmp_path, META).add(record(), [[0.01]])
    (tmp_path / "raw_times.json").write_text("[1, 2]")
    with pytest.raises(results.ResultsError):
        results.load_raw_rounds(tmp_path)


def test_a_run_that_did_not_finish_is_named_for_its_readers():
    assert results.unfinished_note({"status": "complete"}, "r") is None
    assert results.unfinished_note({}, "r") is None  # a folder from before runs recorded how they ended
    assert "was terminated (SIGTERM)" in results.unfinished_note({"status": "terminated"}, "r")
    assert "was interrupted (Ctrl-C)" in results.unfinished_note({"status": "interrupted"}, "r")
    assert "did not finish" in results.unfinished_note({"status": "running"}, "r")
    assert results.unfinished_note({"status": "aborted: MemoryError"}, "runs/x") == (
        "runs/x: the run ended early (aborted: MemoryError); it holds only what was measured before")
