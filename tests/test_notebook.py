"""The example notebook runs top to bottom (code cells executed in order, tiny sizes)."""
import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    params = "".join(cells[0]["source"])
    assert "N_SERIES" in params and "EPOCH_SIZE" in params
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(params, namespace)
    namespace.update(N_SERIES=4, SIZE="tiny", EPOCHS=1, EPOCH_SIZE=32)
    for cell in cells[1:]:
        exec(compile("".join(cell["source"]), "notebook", "exec"), namespace)
    rows = namespace["rows"]
    assert len(rows) == 1 and "val_froc/cpm" in rows[0]
    assert (tmp_path / "data" / "notebook" / "subset0").is_dir()
