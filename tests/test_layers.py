"""The package's layers: every import of luna/ is read (ast) and checked against the order the
README's "How the code is laid out" gives. An arrow the wrong way fails here, with its line.

    cli -> train -> {infer, report} -> runtime -> {data, models, eval, synth} -> io -> luna16 -> leaves

A package may import any package of a lower layer, never one of its own layer or above. Nothing
imports ``luna.cli`` (``luna/__main__.py`` is an entry point, not a layer); no private name
(``_x``) is imported from another package; argparse lives in ``luna.cli`` only; the task's facts
(``luna16``) and the figures (``eval``) do not need torch.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "luna"

LAYERS: dict[str, int] = {
    "errors": 0, "atomic": 0, "progress": 0,
    "luna16": 1,
    "io": 2,
    "data": 3, "models": 3, "eval": 3, "synth": 3,
    "runtime": 4,
    "infer": 5, "report": 5,
    "train": 6,
    "cli": 7,
}
ENTRY_POINTS = {"__main__"}  # may import the command line
NO_TORCH = {"luna16", "eval"}


def part_of(module: str) -> str:
    """The layer a dotted module belongs to: ``luna.train.trainer`` -> ``train``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) of every import in ``source``, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([target] if target else []))
            found.append((node.lineno, target, [alias.name for alias in node.names]))
    return found


def problems_of(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every rule the module breaks, one line each (empty when it keeps them all)."""
    here = part_of(module)
    problems = []
    for line, target, names in imports_of(source, module, is_package):
        where = f"{module}:{line}"
        if target.split(".")[0] == "argparse" and here != "cli":
            problems.append(f"{where}: argparse outside luna.cli")
        if target.split(".")[0] == "torch" and here in NO_TORCH:
            problems.append(f"{where}: luna.{here} must not need torch")
        if target != "luna" and not target.startswith("luna."):
            continue
        there = part_of(target) if target != "luna" else "__init__"
        if there == "__init__":
            # `from luna import x` pulls x through the lazy public API: name the module instead.
            if [name for name in names if name != "__version__"]:
                problems.append(f"{where}: imports from the luna facade; import from the module that defines it")
            continue
        if there == here:
            continue
        if there == "cli" and here not in ENTRY_POINTS:
            problems.append(f"{where}: imports luna.cli; nothing may import the command line")
            continue
        if here in ENTRY_POINTS:
            continue
        if here not in LAYERS or there not in LAYERS:
            problems.append(f"{where}: {target} is in no layer; add it to LAYERS and the README")
        elif LAYERS[there] >= LAYERS[here]:
            problems.append(f"{where}: luna.{here} (layer {LAYERS[here]}) imports {target} "
                            f"(layer {LAYERS[there]}): arrows point down only")
        private = [name for name in names if name.startswith("_")]
        if private:
            problems.append(f"{where}: imports private {', '.join(private)} from another package ({target})")
    return problems


def test_every_import_of_the_package_points_down_the_layers():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path, PACKAGE)
        problems += problems_of(module, path.read_text(encoding="utf-8"), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


def test_every_subpackage_is_a_layer():
    on_disk = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    on_disk |= {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert on_disk == set(LAYERS)


@pytest.mark.parametrize("module, source, expected", [
    ("luna.data.dataset", "from luna.cli.train import LunaTrainingApp\n", "nothing may import the command line"),
    ("luna.data.dataset", "from luna.train.augment import augment_batch\n", "arrows point down only"),
    ("luna.eval.froc", "from luna.data.crops import CropConfig\n", "arrows point down only"),  # a sibling
    ("luna.infer.scoring", "import luna.report.plots\n", "arrows point down only"),
    ("luna.luna16.rules", "import torch\n", "must not need torch"),
    ("luna.train.trainer", "import argparse\n", "argparse outside luna.cli"),
    ("luna.train.trainer", "from luna.synth.phantom import _Chest\n", "imports private _Chest"),
    ("luna.io.ct", "from luna import Ct\n", "luna facade"),
    ("luna.io.ct", "from ..data import crops\n", "arrows point down only"),  # relative, resolved
])
def test_the_checker_catches_each_kind_of_wrong_import(module, source, expected):
    problems = problems_of(module, source)
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_checker_accepts_the_right_direction():
    assert problems_of("luna.train.trainer", "from luna.data.dataset import LunaDataset\nimport torch\n") == []
    assert problems_of("luna.__main__", "from luna.cli import main\n") == []
    assert problems_of("luna.cli.train", "import argparse\nfrom luna.train.config import TrainConfig\n") == []
