"""A picture of each finding: axial, coronal and sagittal slices through it, the finding circled.

``luna detect --pictures`` writes one PNG per finding the classifier calls a nodule, beside the
scan's JSON: ``<seriesuid>_finding<rank>.png``, ranked as in the JSON. Slices are the scan's own
voxels in a lung window, drawn at their true aspect (pixels and slices in millimetres), head up
in the coronal and sagittal views; the circle has the finding's estimated diameter. Built with
matplotlib's object API, as :mod:`luna.report.plots` is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from luna.io.ct import Ct
from luna.report.plots import save_figure

# Lung window: air black, soft tissue and nodules white.
WINDOW_HU = (-1000, 400)
MARK_COLOR = "tab:red"


class FindingLike(Protocol):
    """What a picture needs of a finding (:class:`luna.infer.findings.Finding` has it)."""

    probability: float
    center_xyz: tuple[float, float, float]
    center_irc: tuple[float, float, float]
    diameter_mm: float


def finding_figure(ct: Ct, finding: FindingLike, title: str) -> Figure:
    """The three slices through ``finding``, side by side."""
    i, r, c = (int(np.clip(np.rint(v), 0, n - 1)) for v, n in zip(finding.center_irc, ct.hu_a.shape))
    sx, sy, sz = (float(v) for v in ct.spacing_xyz)
    # Head up: flip the slice axis when the index runs from head to feet.
    head_up = float(np.asarray(ct.direction).reshape(3, 3)[2, 2]) >= 0
    views = (
        ("axial", ct.hu_a[i], (c, r), (sx, sy), False),
        ("coronal", ct.hu_a[:, r, :], (c, i), (sx, sz), head_up),
        ("sagittal", ct.hu_a[:, :, c], (r, i), (sy, sz), head_up),
    )
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    for ax, (name, image, (u, v), (du, dv), lower) in zip(axes, views):
        ax.imshow(image, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=dv / du,
                  origin="lower" if lower else "upper", interpolation="nearest")
        ax.add_patch(Ellipse((u, v), width=finding.diameter_mm / du, height=finding.diameter_mm / dv,
                             fill=False, edgecolor=MARK_COLOR, linewidth=1.5))
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return fig


def draw_findings(ct: Ct, series_uid: str, findings: Sequence[FindingLike], folder: Path) -> list[Path]:
    """One PNG per finding in ``folder``; returns their paths."""
    paths = []
    for rank, finding in enumerate(findings, start=1):
        x, y, z = finding.center_xyz
        title = (f"{series_uid}  finding {rank}: probability {finding.probability:.3f}, "
                 f"~{finding.diameter_mm:.1f} mm, at ({x:.1f}, {y:.1f}, {z:.1f}) mm")
        paths.append(save_figure(finding_figure(ct, finding, title), Path(folder) / f"{series_uid}_finding{rank:02d}.png"))
    return paths
