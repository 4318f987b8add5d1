"""docs/quickstart.ipynb, executed cell by cell in a real Jupyter kernel (nbclient), in its fast setting
(DIFFKIT_QUICKSTART_FAST=1: half a minute of training, fewer FID images). The committed notebook carries
no outputs: they are made here, in a temporary folder, and thrown away."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "quickstart.ipynb"


def test_the_committed_notebook_has_no_outputs() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_the_quickstart_runs_from_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="needs nbclient (pip install -e '.[dev]')")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install -e '.[dev]')")
    pytest.importorskip("ipykernel", reason="needs ipykernel (pip install -e '.[dev]')")
    monkeypatch.setenv("DIFFKIT_QUICKSTART_FAST", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("DIFFKIT_RUNS_DIR", str(tmp_path / "runs"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()  # a cell that raises fails the test with its traceback
    print(f"quickstart executed in {time.perf_counter() - start:.0f} s")
    outputs = [c.get("outputs", []) for c in notebook.cells if c.cell_type == "code"]
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for out in outputs for o in out)
    pictures = sum("image/png" in o.get("data", {}) for out in outputs for o in out)
    gifs = sum("image/gif" in o.get("data", {}) for out in outputs for o in out)
    assert "trained " in text and "planned " in text  # training's own progress lines reached the notebook
    assert "Samples(16 images, labels [5]" in text
    assert "'replace': {'psnr'" in text and "'repaint'" in text
    assert "FID" in text
    if "reference digits: mnist:test" in text:  # against MNIST's test split the floor is measured too
        assert "real-vs-real floor" in text
    # the class grid, a digit, three guidance grids, the denoising, the inpainting: pictures, not text
    assert pictures >= 7 and gifs == 1
    assert (tmp_path / "runs" / "quickstart" / "checkpoints" / "last.safetensors").is_file()
