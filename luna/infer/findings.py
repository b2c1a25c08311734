"""What detection finds in one scan, and how it is written: results rows and a JSON per scan.

A :class:`Finding` is a grouped candidate after the classifier: its probability (after
suppression of near neighbours, as in the results file, and before), its centre in world
millimetres and in the scan's own voxels, the size the segmentation (or the blob detector) gives
it, and which of the two proposed it. A scan's
JSON holds its findings, most probable first, and the scan's geometry, so that a viewer can
place them without the CSV.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from luna.atomic import write_text_atomic
from luna.luna16.csvfiles import prediction_rows


@dataclass(frozen=True)
class Finding:
    """One candidate of a scan with the classifier's verdict.

    Args:
        probability: nodule probability as written to the results file (after suppression).
        classifier_probability: the classifier's own probability, before suppression.
        center_xyz: world millimetres.
        center_irc: continuous voxel position in the scan as stored (index, row, column).
        diameter_mm: diameter of the sphere of the segmented volume (of a blob: of its ball).
        volume_mm3: the segmented volume (of a blob: of its ball).
        segmentation_peak: the highest probability the segmentation gave a voxel of it (of a
            blob: the probability at its centre).
        source: what proposed it: ``"segmentation"`` or ``"blob"``.
    """

    probability: float
    classifier_probability: float
    center_xyz: tuple[float, float, float]
    center_irc: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    segmentation_peak: float
    source: str = "segmentation"


@dataclass
class ScanFindings:
    """Everything detection found in one scan, most probable first.

    ``geometry`` holds ``origin_xyz``, ``spacing_xyz``, ``direction`` (row-major 3 x 3) and
    ``shape_irc`` of the scan as stored.
    """

    series_uid: str
    path: str
    geometry: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[list[str]]:
        """The results-file rows of this scan, ``seriesuid,coordX,coordY,coordZ,probability``."""
        if not self.findings:
            return []
        return list(prediction_rows([self.series_uid] * len(self.findings), [f.center_xyz for f in self.findings],
                                    [f.probability for f in self.findings]))

    def to_dict(self) -> dict[str, Any]:
        return {"seriesuid": self.series_uid, "file": self.path, "geometry": self.geometry,
                "findings": [dict(asdict(f), rank=n + 1) for n, f in enumerate(self.findings)],
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}

    def write_json(self, folder: Path) -> Path:
        """``folder/<seriesuid>.json``, written atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(folder / f"{self.series_uid}.json",
                                 json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")


def merge_rows(per_rank: Iterable[list[tuple[int, list[list[str]]]]]) -> list[list[str]]:
    """The results rows of every process, in the order of the scan list.

    Args:
        per_rank: for each process, ``(scan index, that scan's rows)`` for the scans it did.

    Returns:
        One list of rows: scan 0's, then scan 1's..., whichever process did each, so that the
        file is the one a single process writes.
    """
    by_scan = sorted((index, rows) for part in per_rank for index, rows in part)
    indices = [index for index, _ in by_scan]
    if len(set(indices)) != len(indices):
        raise ValueError(f"a scan was done by two processes: scan indices {indices}")
    return [row for _, rows in by_scan for row in rows]


def sorted_findings(findings: list[Finding]) -> list[Finding]:
    """Most probable first; ties keep the order they came in."""
    order = np.argsort([-f.probability for f in findings], kind="stable")
    return [findings[i] for i in order]
