"""The example notebook as Jupyter runs it: a kernel started in notebooks/, cells in order, tiny sizes."""
import json
import shutil
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_in_jupyter_and_writes_where_the_readme_does(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    # A copy of the repository's layout: the notebook in notebooks/, the README's folders beside it.
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    notebook = nbformat.read(folder / NOTEBOOK.name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "N_SERIES" in code[0].source and "EPOCH_SIZE" in code[0].source
    code[0].source += "\nN_SERIES, SIZE, EPOCHS, EPOCH_SIZE = 4, 'tiny', 1, 32\n"
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}).execute()

    assert (tmp_path / "data" / "notebook" / "subset0").is_dir()
    assert any((tmp_path / "runs" / "luna").glob("*-notebook/summary.csv")) and (tmp_path / "cache").is_dir()
    assert sorted(p.name for p in folder.iterdir()) == [NOTEBOOK.name]  # nothing written beside the notebook
    printed = "".join(out.get("text", "") for cell in code for out in cell.outputs)
    assert "epoch 1: val AUC" in printed and "CPM" in printed
    last = code[-1].outputs
    assert [out["output_type"] for out in last] == ["execute_result"] and "image/png" in last[0]["data"]


def test_the_notebook_is_saved_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    assert all(not cell.get("outputs") for cell in cells if cell["cell_type"] == "code")
