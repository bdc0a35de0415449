"""notebooks/results.ipynb runs top to bottom against a small results folder and shows the table and plots."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from synthetic_runs import records, write_run

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "results.ipynb"


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


@pytest.fixture()
def run_dir(tmp_path):
    return write_run(tmp_path / "run", records(names=["baseline", "conv_lower", "practical", "performer"],
                                              failed=("performer",)))


def test_notebook_reproduces_the_table_and_plots(run_dir, monkeypatch):
    monkeypatch.setenv("BENCH_RESULTS_DIR", str(run_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # raises on a cell error

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "\n".join(out.get("text", "") for out in outputs)
    assert f"{run_dir}: 16 records, 12 ok" in text
    html = "\n".join(out.get("data", {}).get("text/html", "") for out in outputs)
    assert "params (M)" in html and "jax/jit b=1: p50 (ms)" in html  # the paper table
    assert "failed" in html and "NaN in output" in html  # the failure and its error
    markdown = "\n".join(out.get("data", {}).get("text/markdown", "") for out in outputs)
    assert "FLOPs = 2 x multiply-adds" in markdown
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 6  # latency, speedup, state vs context, batch, Pareto, roofline
