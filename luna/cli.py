"""``luna <command> [flags]``: dispatch to the apps.

Apps are imported lazily so ``luna synth --help`` does not pay for importing torch.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

from luna.app import run_app

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("luna.synth:LunaSynthApp", "write a synthetic data set in the LUNA16 layout"),
    "prepcache": ("luna.prepcache:LunaPrepCacheApp", "fill the crop cache, one scan read at a time"),
    "train": ("luna.training:LunaTrainingApp", "train the nodule classifier"),
    "predict": ("luna.predict:LunaPredictApp", "score candidates and write a LUNA16 results file"),
    "evaluate": ("luna.evaluate:LunaEvaluateApp", "FROC / CPM and friends by the LUNA16 rules"),
    "report": ("luna.report:LunaReportApp", "one self-contained HTML page for a training run"),
    "bench-loader": ("luna.bench_loader:LunaBenchLoaderApp", "data loader throughput by workers and batch size"),
}


def _usage() -> str:
    lines = ["usage: luna <command> [flags]   (luna <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<13} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"luna: error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, class_name = COMMANDS[command][0].split(":")
    app_cls = getattr(importlib.import_module(module_name), class_name)
    return run_app(app_cls, rest, prog=f"luna {command}")


if __name__ == "__main__":
    sys.exit(main())
