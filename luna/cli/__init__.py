"""``luna <command> [flags]``: the command line, and the only place argparse lives.

One module per command (``luna.cli.train``, ``luna.cli.predict`` ...), each with a
``get_args_parser()`` and an app class built from an argument list with a ``main()``. The code
below this package takes plain values and dataclasses; nothing imports this package (the
``luna`` package's lazy ``run`` and ``python -m luna`` are entry points, not imports).

Apps are imported lazily so that ``luna synth --help`` does not pay for importing torch.
"""
from __future__ import annotations

import importlib
import logging
import shlex
import sys
from typing import Sequence

from luna.cli.common import configure_logging, run_app

log = logging.getLogger(__name__)

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("luna.cli.synth:LunaSynthApp", "write a synthetic data set in the LUNA16 layout"),
    "prepcache": ("luna.cli.prepcache:LunaPrepCacheApp", "fill the crop cache, one scan read at a time"),
    "train": ("luna.cli.train:LunaTrainingApp", "train the nodule classifier"),
    "train-seg": ("luna.cli.train_seg:LunaTrainSegApp", "train the segmentation model that finds candidates"),
    "predict": ("luna.cli.predict:LunaPredictApp", "score candidates and write a LUNA16 results file"),
    "detect": ("luna.cli.detect:LunaDetectApp", "find nodules in scans: segmentation, grouping, classifier"),
    "evaluate": ("luna.cli.evaluate:LunaEvaluateApp", "FROC / CPM and friends by the LUNA16 rules"),
    "crossval": ("luna.cli.crossval:LunaCrossvalApp", "cross-validation by subset: train, predict, pool the folds"),
    "export": ("luna.cli.export:LunaExportApp", "a checkpoint as ONNX or TorchScript, with a model card"),
    "report": ("luna.cli.report:LunaReportApp", "one self-contained HTML page for a training run"),
    "bench-loader": ("luna.cli.bench_loader:LunaBenchLoaderApp", "data loader throughput by workers and batch size"),
}

# The apps' dotted paths before the code moved into role packages; notebooks written for them
# keep working.
LEGACY_APP_PATHS = {
    "luna.synth.LunaSynthApp": "synth", "luna.prepcache.LunaPrepCacheApp": "prepcache",
    "luna.training.LunaTrainingApp": "train", "luna.predict.LunaPredictApp": "predict",
    "luna.evaluate.LunaEvaluateApp": "evaluate", "luna.report.LunaReportApp": "report",
    "luna.bench_loader.LunaBenchLoaderApp": "bench-loader",
}


def _version() -> str:
    from luna import __version__
    return __version__


def _usage() -> str:
    lines = ["usage: luna <command> [flags]   (luna <command> --help for its flags; luna --version)", "",
             "commands:"]
    lines += [f"  {name:<13} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def app_class(name: str) -> type:
    """The app class of a command name (``"train"``), a current dotted path
    (``"luna.cli.train.LunaTrainingApp"``) or one of :data:`LEGACY_APP_PATHS`."""
    name = LEGACY_APP_PATHS.get(name, name)
    if name in COMMANDS:
        module_name, class_name = COMMANDS[name][0].split(":")
    else:
        module_name, _, class_name = name.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"luna {_version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"luna: error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return run_app(app_class(command), rest, prog=f"luna {command}")


def run(app: str, *args: str):
    """Notebook helper: ``run("train", "--data-dir data/synth --epochs 1")``.

    Args:
        app: a command name as on the command line, or an app's dotted path
            (``"luna.cli.train.LunaTrainingApp"``; the paths from before the move work too).
        args: flags, or one string with several flags (split like a shell would).

    Returns:
        What the app's ``main()`` returns (the run directory, the results file ...). Errors are
        raised, not turned into exit codes, so a notebook shows them.
    """
    app_cls = app_class(app)
    argv = [part for arg in args for part in shlex.split(arg)]
    configure_logging()
    log.info("Running: %s(%r).main()", app_cls.__name__, argv)
    result = app_cls(argv).main()
    log.info("Finished: %s.main()", app_cls.__name__)
    return result


if __name__ == "__main__":
    sys.exit(main())
