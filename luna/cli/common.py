"""What every command shares: logging setup, argparse types and flag groups, and turning user
mistakes into one line.

An app is a class built from an argument list (``App(["--epochs=1"])``) with a ``main()``;
:func:`run_app` is the entry point that ``luna <command>``, ``python -m luna <command>`` and
``python -m luna.cli.<command>`` go through, and :func:`run` the notebook helper's.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from luna.data.crops import CROP_EDGE, CROP_EDGES, CROP_VOXEL_MM, CropConfig
from luna.errors import LunaError, describe_path_error, is_disk_full
from luna.eval.suppression import NMS_RADIUS_MM, SUPPRESSED_SCALE
from luna.luna16.paths import CACHE_DIR_ENV, DATA_DIR_ENV, default_cache_dir, default_data_dir
from luna.models.views import DEFAULT_VIEW_COUNT, DEFAULT_VIEWS_TOP, VIEW_COUNTS
from luna.runtime.device import CHANNELS_LAST_CHOICES, PRECISION_CHOICES

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time: notebooks and test runners swap it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Send log records to stderr once; calling again only changes the level."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags every app accepts."""
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show full tracebacks for errors instead of one line")
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS \
                or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (a share, a probability, a threshold)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def crop_voxel_mm(text: str) -> float:
    """argparse type: 0 (crop the scan's own voxels) or a voxel size :class:`CropConfig` accepts."""
    value = non_negative_float(text)
    try:
        CropConfig(voxel_mm=value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def add_crop_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--crop-mm`` and ``--crop-edge``: how crops are cut. Training and prepcache share them,
    because a cache only serves the crops it was filled with."""
    parser.add_argument("--crop-mm", type=crop_voxel_mm, default=CROP_VOXEL_MM, metavar="MM",
                        help="resample each scan to isotropic voxels of MM mm before cropping, so nodules look the "
                             "same at any slice thickness; 0 crops the scan's own voxels (the reference)")
    parser.add_argument("--crop-edge", choices=CROP_EDGES, default=CROP_EDGE,
                        help="crops that would leave the volume: pad (stay centred on the candidate, air "
                             "outside) or shift (the reference: moved inside, off the candidate); prepcache "
                             "and train must agree")


def add_scoring_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--tta-views``, ``--tta-top`` and ``--nms-mm``: how ``luna predict`` and ``luna detect`` score a scan."""
    parser.add_argument("--tta-views", type=int, choices=VIEW_COUNTS, default=DEFAULT_VIEW_COUNT,
                        help="test-time augmentation: average the model over this many in-plane symmetric "
                             "views of each crop (turns, mirror images); 1 = off, the compute grows with it")
    parser.add_argument("--tta-top", type=non_negative_int, default=DEFAULT_VIEWS_TOP, metavar="K",
                        help="score every candidate at one view, then only the K best of each scan with all "
                             "--tta-views (the others keep their one-view score); 0 = all views for every "
                             "candidate")
    parser.add_argument("--nms-mm", type=non_negative_float, default=NMS_RADIUS_MM,
                        help="non-maximum suppression: a candidate closer than this to a higher-scoring "
                             f"one of its scan is taken as the same finding and its probability is scaled by "
                             f"{SUPPRESSED_SCALE:g} (every row is still written); 0 = off")


def add_device_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``, ``--precision`` and ``--channels-last``: where and how the network runs."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="autocast dtype; auto: bf16 where the device supports it, else fp32")
    parser.add_argument("--channels-last", choices=CHANNELS_LAST_CHOICES, default="auto",
                        help="channels_last_3d memory format; auto: on")


def add_data_dir_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, required_help: str = "") -> None:
    """``--data-dir``, defaulting to ``$LUNA_DATA_DIR`` (else data/luna16)."""
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help=required_help or "LUNA16 root holding subset*/ and the CSVs; scans may be .mhd, "
                                              f".nii(.gz), .nrrd, .mha or DICOM series folders (${DATA_DIR_ENV})")


def add_cache_dir_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, extra: str = "") -> None:
    """``--cache-dir``, defaulting to ``$LUNA_CACHE_DIR`` (else cache)."""
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help=f"crop cache root (${CACHE_DIR_ENV}){extra}")


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with luna's help layout."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def run_app(app_factory: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None,
            prog: str | None = None) -> int:
    """Build and run an app; return the process exit status.

    User mistakes (:class:`LunaError`) become one ``error:`` line on stderr and exit status 1
    (data) or 2 (usage); so do a full disk and an OS error on a path (permission denied, a
    read-only file system, a file where a folder is expected: exit status 1). ``--debug``
    re-raises them with the traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()
    debug = "--debug" in argv
    name = prog or getattr(app_factory, "__name__", "luna")
    try:
        app = app_factory(argv)
        app.main()  # type: ignore[attr-defined]
    except LunaError as exc:
        if debug:
            raise
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A full disk, or a path the user gave that cannot be used (read-only, no permission, a
        # file where a folder should be), is the machine's state, not a bug: say where, without a
        # traceback. (Every file luna writes for later is atomic, so what was there is intact.)
        if debug:
            raise
        if is_disk_full(exc):
            where = f" writing {exc.filename}" if exc.filename else ""
            print(f"{name}: error: no space left on the device{where}; free some space and run again "
                  f"({exc.strerror or exc})", file=sys.stderr)
            return 1
        problem = describe_path_error(exc)
        if problem is None:
            raise
        print(f"{name}: error: {problem}", file=sys.stderr)
        return 1
    return 0




def explicit_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags (and positionals) typed in ``argv``, not left at their defaults.

    ``--resume`` needs this: a flag typed on the resuming command line is a request to change
    the run, a default is not.
    """
    probe = copy.deepcopy(parser)
    for action in probe._actions:  # argparse keeps its actions there; there is no public way
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))
