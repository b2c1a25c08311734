"""The LUNA16 scoring rules as constants and the hit test (docs/luna16.md, "Scoring").

A candidate *hits* a finding when its distance to the finding's centre is less than the
finding's radius; an unknown diameter (negative in the CSV) counts as ``UNKNOWN_DIAMETER_MM``.
Only the ``MAX_MARKS_PER_SCAN`` highest-scored candidates of a scan are scored, and CPM is the
mean sensitivity at ``FP_RATES`` false positives per scan. The FROC itself is ``luna.eval.froc``;
the hit test lives here because training (which negatives to leave out) uses it too.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_MARKS_PER_SCAN = 100
UNKNOWN_DIAMETER_MM = 10.0

# series uid -> (M, 4) array of x, y, z (mm) and diameter_mm; for nodules and excluded findings.
Findings = Mapping[str, np.ndarray]


def hits(centers_xyz: np.ndarray, findings: np.ndarray) -> np.ndarray:
    """(N, M) bool: candidate n lies strictly inside finding m.

    Args:
        centers_xyz: (N, 3) candidate centres, world mm.
        findings: (M, 4) x, y, z, diameter_mm; a negative diameter is unknown.
    """
    diameter_mm = np.where(findings[:, 3] < 0, UNKNOWN_DIAMETER_MM, findings[:, 3])
    dist2 = ((centers_xyz[:, None, :] - findings[None, :, :3]) ** 2).sum(axis=2)
    return dist2 < (diameter_mm / 2) ** 2


def findings_of(findings: Findings | None, uid: str) -> np.ndarray:
    """The (M, 4) findings of one scan; (0, 4) when it has none."""
    if findings is None or uid not in findings:
        return np.zeros((0, 4))
    return np.asarray(findings[uid], dtype=np.float64).reshape(-1, 4)


def inside_findings(series_uids: Sequence[str], centers_xyz: np.ndarray, findings: Findings) -> np.ndarray:
    """(N,) bool: the candidate lies inside a finding of its own scan, by the hit rule.

    Args:
        series_uids: (N,) scan of each candidate.
        centers_xyz: (N, 3) candidate centres, world mm.
        findings: ``{uid: (M, 4) x, y, z, diameter_mm}`` (e.g. the excluded findings).
    """
    uids = np.asarray(series_uids).astype(str).reshape(-1)
    centers_xyz = np.asarray(centers_xyz, dtype=np.float64).reshape(-1, 3)
    inside = np.zeros(len(uids), dtype=bool)
    for uid in set(uids.tolist()) & set(findings):
        rows = np.flatnonzero(uids == uid)
        inside[rows] = hits(centers_xyz[rows], findings_of(findings, uid)).any(axis=1)
    return inside
