"""``luna export``: a checkpoint's network as an ONNX or TorchScript file, with its model card."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from luna.cli.common import add_common_args, new_parser, run_app
from luna.infer.export import DEFAULT_NAMES, ExportConfig, export_model
from luna.infer.modelcard import EXPORT_FORMATS

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("luna export", "Write a checkpoint's network as a file that runs without luna's training "
                                       "code (ONNX for onnxruntime, or TorchScript), in float32 with any batch size, "
                                       "and beside it <file>.json, its model card: the crops it takes, the views "
                                       "and suppression luna predict adds, its training data and metrics, its "
                                       "intended use. luna predict --checkpoint <file> runs it.")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a luna checkpoint file, or a training run directory (its best.pt); required")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx",
                        help="onnx (needs pip install 'luna[onnx]') or torchscript")
    parser.add_argument("--out", type=Path, default=None,
                        help="the model file; an ONNX one must end in .onnx (default: "
                             f"{' or '.join(DEFAULT_NAMES.values())} beside the checkpoint)")
    return add_common_args(parser)


class LunaExportApp:
    """Export a checkpoint. ``LunaExportApp(["--checkpoint", "runs/luna/<run>"]).main()``."""

    def __init__(self, argv: Sequence[str] | None = None):
        args = vars(get_args_parser().parse_args(argv))
        args.pop("debug", None)
        self.config = ExportConfig(**args)

    def main(self) -> Path:
        """Export; return the model file's path."""
        log.info("Starting %s, %s", type(self).__name__, self.config)
        return export_model(self.config)


if __name__ == "__main__":
    sys.exit(run_app(LunaExportApp, prog="luna export"))
