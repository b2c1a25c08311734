"""LUNA16 scoring: FROC curve, CPM and bootstrap intervals, by the official rules (docs/luna16.md).

The rules, as implemented here:

- Only the ``MAX_MARKS_PER_SCAN`` (100) highest-probability candidates of each scan are scored
  (ties at the cut keep the earlier row).
- A candidate *hits* a finding when its Euclidean distance (mm) to the finding's centre is less
  than the radius, ``diameter_mm / 2``. A negative diameter means unknown and counts as
  ``UNKNOWN_DIAMETER_MM`` (10 mm, so a 5 mm radius), for nodules and excluded findings alike.
- Each nodule is found at most once, with the highest probability among the scored candidates
  that hit it; its other hits are ignored (not false positives). A candidate inside several
  nodules counts for each of them.
- A candidate that hits an excluded finding and no nodule is dropped. A candidate that hits
  nothing is a false positive.
- Evaluated scans: ``series_list`` if given, else the union of the scans in the annotations and
  in the predictions. Every evaluated scan counts in the FP-per-scan denominator even without
  predictions; its nodules are then missed. Rows of other scans are ignored.

Reading the curve. The FROC curve has one point per distinct probability threshold ``t``
(candidates with probability ``>= t`` are positive). The sensitivity at a rate ``r`` is a step
reading: the sensitivity of the lowest threshold whose average FP/scan is ``<= r`` (0 if even the
highest threshold has more; the last point's if the curve never reaches ``r``). The official
script interpolates linearly between points instead, which can credit a sensitivity no threshold
reaches; the step reading is exact, and invariant to any strictly increasing rescaling of the
probabilities. CPM is the mean of the readings at ``FP_RATES``.

Bootstrap: scans are resampled with replacement; a scan drawn k times counts k times in every
count (nodules, hits, false positives). All resamples are evaluated at once as weighted
cumulative sums over the candidates sorted by probability, so 1,000 resamples take seconds.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from luna.errors import DataError
from luna.luna16.rules import FP_RATES, MAX_MARKS_PER_SCAN, Findings, findings_of, hits

log = logging.getLogger(__name__)

# Where the bootstrap band around the FROC curve is sampled: 4 points per doubling, 1/64 to 128
# FP/scan (the cap of 100 candidates per scan bounds the rate at 100).
BAND_FPS = np.geomspace(1 / 64, 128, 53)
# Resamples evaluated together; fixed so that results for a seed never depend on memory.
_BOOTSTRAP_CHUNK = 64


# ---------------------------------------------------------------------------------------------
# Matching candidates to findings


@dataclass
class Matches:
    """What scoring candidates against findings leaves: the input of the FROC and the bootstrap.

    A *mark* is one point of the FROC: a found nodule (with its best hit's probability) or a
    false positive. Ignored duplicate hits and excluded candidates are not marks.
    """

    series_uids: list[str]  # (S,) evaluated scans
    nodules_per_scan: np.ndarray  # (S,) int
    mark_probabilities: np.ndarray  # (K,)
    mark_is_nodule: np.ndarray  # (K,) bool
    mark_scan: np.ndarray  # (K,) index into series_uids
    candidate_probabilities: np.ndarray  # (C,) candidates of evaluated scans, excluded ones left out
    candidate_labels: np.ndarray  # (C,) bool: the candidate hits a nodule
    n_candidates: int  # rows of evaluated scans, before the per-scan cap
    n_scored: int  # after the per-scan cap
    n_excluded: int  # scored candidates dropped for hitting only an excluded finding
    n_ignored_rows: int  # prediction rows of scans not evaluated


def match_candidates(series_uids: Sequence[str] | np.ndarray, centers_xyz: np.ndarray,
                     probabilities: np.ndarray, annotations: Findings, excluded: Findings | None = None,
                     series_list: Sequence[str] | None = None,
                     max_marks_per_scan: int = MAX_MARKS_PER_SCAN) -> Matches:
    """Apply the LUNA16 hit rules scan by scan (see the module docstring).

    Args:
        series_uids: (N,) scan of each candidate.
        centers_xyz: (N, 3) candidate centres, world mm.
        probabilities: (N,) nodule probabilities (any finite scores; only their order matters).
        annotations: nodules, ``{uid: (M, 4) x, y, z, diameter_mm}``.
        excluded: findings that are neither hits nor false positives, same form.
        series_list: scans to evaluate; default: scans in ``annotations`` or in the predictions.
        max_marks_per_scan: candidates scored per scan, highest probabilities first.

    Returns:
        The marks and per-candidate labels of the evaluated scans.
    """
    uids = np.asarray(series_uids).astype(str).reshape(-1)
    centers_xyz = np.asarray(centers_xyz, dtype=np.float64).reshape(-1, 3)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if not len(uids) == len(centers_xyz) == len(probabilities):
        raise ValueError(f"{len(uids)} series uids, {len(centers_xyz)} centres and "
                         f"{len(probabilities)} probabilities: lengths differ")
    bad = ~np.isfinite(probabilities) | ~np.isfinite(centers_xyz).all(axis=1)
    if bad.any():
        raise DataError(f"{int(bad.sum())} of {len(bad)} predictions have a NaN or infinite "
                        f"probability or coordinate (first: series {uids[bad.argmax()]})")
    row_uids = uids.tolist()  # a dict lookup per row is several times faster than np.unique on strings
    scans = (list(dict.fromkeys(str(uid) for uid in series_list)) if series_list is not None
             else sorted(set(annotations) | set(row_uids)))
    position = {uid: s for s, uid in enumerate(scans)}
    row_scan = np.fromiter((position.get(uid, -1) for uid in row_uids), dtype=np.int64, count=len(row_uids))
    order = np.argsort(row_scan, kind="stable")
    bounds = np.searchsorted(row_scan[order], np.arange(len(scans) + 1))

    nodules_per_scan = np.zeros(len(scans), dtype=np.int64)
    mark_probs, mark_nodule, mark_scan, cand_probs, cand_labels = [], [], [], [], []
    n_scored = n_excluded = 0
    for s, uid in enumerate(scans):
        rows = order[bounds[s]:bounds[s + 1]]
        probs, centers = probabilities[rows], centers_xyz[rows]
        nodules = findings_of(annotations, uid)
        nodules_per_scan[s] = len(nodules)
        hits_nodule = hits(centers, nodules)
        hits_excluded = hits(centers, findings_of(excluded, uid)).any(axis=1)
        is_nodule = hits_nodule.any(axis=1)
        keep = is_nodule | ~hits_excluded
        cand_probs.append(probs[keep])
        cand_labels.append(is_nodule[keep])

        top = np.argsort(-probs, kind="stable")[:max_marks_per_scan]
        top_probs, top_hits = probs[top], hits_nodule[top]
        found = top_hits.any(axis=0)
        best = np.where(top_hits, top_probs[:, None], -np.inf).max(axis=0, initial=-np.inf)[found]
        is_fp = ~is_nodule[top] & ~hits_excluded[top]
        n_scored += len(top)
        n_excluded += int((~is_nodule[top] & hits_excluded[top]).sum())
        mark_probs += [best, top_probs[is_fp]]
        mark_nodule += [np.ones(len(best), bool), np.zeros(int(is_fp.sum()), bool)]
        mark_scan.append(np.full(len(best) + int(is_fp.sum()), s, dtype=np.int64))

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return Matches(
        series_uids=scans, nodules_per_scan=nodules_per_scan,
        mark_probabilities=cat(mark_probs, np.float64), mark_is_nodule=cat(mark_nodule, bool),
        mark_scan=cat(mark_scan, np.int64), candidate_probabilities=cat(cand_probs, np.float64),
        candidate_labels=cat(cand_labels, bool), n_candidates=int((row_scan >= 0).sum()),
        n_scored=n_scored, n_excluded=n_excluded, n_ignored_rows=int((row_scan < 0).sum()))


# ---------------------------------------------------------------------------------------------
# FROC, CPM and the bootstrap


@dataclass
class FrocInterval:
    """Bootstrap percentile intervals (resampling scans with replacement)."""

    n_bootstraps: int
    seed: int
    level: float
    cpm: tuple[float, float]
    sensitivity_at: dict[float, tuple[float, float]]
    band_fps: np.ndarray  # (G,) FP/scan where the band is sampled
    band_lower: np.ndarray  # (G,)
    band_upper: np.ndarray  # (G,)


@dataclass
class FrocResult:
    """A FROC curve and its summary. Sensitivities are nan when the evaluated scans hold no nodule."""

    fps_per_scan: np.ndarray  # (P,) non-decreasing, one point per distinct threshold
    sensitivity: np.ndarray  # (P,)
    thresholds: np.ndarray  # (P,) decreasing: candidates with probability >= threshold count
    cpm: float
    sensitivity_at: dict[float, float]  # rate -> step reading, for FP_RATES
    n_scans: int
    n_nodules: int
    n_found: int  # nodules hit by a scored candidate: the curve's ceiling is n_found / n_nodules
    n_false_positives: int  # at the lowest threshold
    n_candidates: int
    n_scored: int
    ci: FrocInterval | None = field(default=None)


class _SortedMarks:
    """Marks sorted by decreasing probability, with the last index of each run of equal ones."""

    def __init__(self, matches: Matches):
        order = np.argsort(-matches.mark_probabilities, kind="stable")
        probs = matches.mark_probabilities[order]
        self.scan = matches.mark_scan[order]
        self.is_nodule = matches.mark_is_nodule[order]
        self.point_ends = np.flatnonzero(np.r_[probs[1:] != probs[:-1], True]) if len(probs) else np.zeros(0, np.int64)
        self.thresholds = probs[self.point_ends]

    def cumulative(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, P) weighted false-positive and nodule counts at each threshold, for (B, S) scan weights."""
        w = weights[:, self.scan]
        cum_fp = np.cumsum(w * ~self.is_nodule, axis=1)[:, self.point_ends]
        cum_tp = np.cumsum(w * self.is_nodule, axis=1)[:, self.point_ends]
        return cum_fp, cum_tp


def _read_at(cum_fp: np.ndarray, cum_tp: np.ndarray, n_nodules: np.ndarray, n_scans: int,
             rates: Sequence[float]) -> np.ndarray:
    """(B, R) step readings: for each row, the nodule count of the last point with FP <= rate * scans.

    Rows of ``cum_fp`` are non-decreasing, so offsetting row b by ``b * span`` makes the whole
    matrix one sorted vector and a single ``searchsorted`` finds every row's point at once.
    """
    n_rows, n_points = cum_fp.shape
    limits = np.asarray(rates, dtype=np.float64) * n_scans
    if n_points == 0:
        found = np.zeros((n_rows, len(limits)))
    else:
        span = cum_fp[:, -1].max() + limits.max() + 1.0
        offsets = np.arange(n_rows)[:, None] * span
        flat_index = np.searchsorted((cum_fp + offsets).ravel(), (limits[None, :] + offsets).ravel(),
                                     side="right").reshape(n_rows, len(limits))
        point = flat_index - np.arange(n_rows)[:, None] * n_points - 1
        found = np.where(point >= 0, np.take_along_axis(cum_tp, np.maximum(point, 0), axis=1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_nodules[:, None] > 0, found / n_nodules[:, None], np.nan)


def bootstrap_froc(matches: Matches, n_bootstraps: int = 1000, seed: int = 0,
                   level: float = 0.95) -> FrocInterval:
    """Percentile intervals for CPM, the sensitivities at ``FP_RATES`` and a band along the curve.

    Args:
        matches: from :func:`match_candidates`.
        n_bootstraps: resamples of the scans, with replacement.
        seed: seeds numpy's default generator; the same seed gives the same interval.
        level: central coverage of the interval (0.95: 2.5th and 97.5th percentiles).

    Returns:
        The intervals. Resamples without any nodule (sensitivity undefined) are left out.
    """
    if n_bootstraps < 1:
        raise ValueError(f"n_bootstraps must be >= 1, got {n_bootstraps}")
    n_scans = len(matches.series_uids)
    marks = _SortedMarks(matches)
    rates = np.concatenate([FP_RATES, BAND_FPS])
    rng = np.random.default_rng(seed)
    readings = []
    for start in range(0, n_bootstraps, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, n_bootstraps - start)
        draws = rng.integers(0, n_scans, size=(size, n_scans)) + np.arange(size)[:, None] * n_scans
        weights = np.bincount(draws.ravel(), minlength=size * n_scans).reshape(size, n_scans).astype(np.float64)
        cum_fp, cum_tp = marks.cumulative(weights)
        readings.append(_read_at(cum_fp, cum_tp, weights @ matches.nodules_per_scan, n_scans, rates))
    sens = np.concatenate(readings)
    n_rates = len(FP_RATES)
    samples = np.column_stack([sens[:, :n_rates].mean(axis=1), sens])  # column 0: CPM
    tail = (1 - level) / 2 * 100
    with warnings.catch_warnings():
        # All-nan columns (no resample had a nodule) warn; nan is the right answer there.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return FrocInterval(
        n_bootstraps=n_bootstraps, seed=seed, level=level, cpm=(float(low[0]), float(high[0])),
        sensitivity_at={rate: (float(low[1 + i]), float(high[1 + i])) for i, rate in enumerate(FP_RATES)},
        band_fps=BAND_FPS.copy(), band_lower=low[1 + n_rates:], band_upper=high[1 + n_rates:])


def froc_from_matches(matches: Matches, n_bootstraps: int = 0, seed: int = 0) -> FrocResult:
    """The FROC curve, CPM and (if ``n_bootstraps`` > 0) bootstrap intervals of matched marks."""
    n_scans = len(matches.series_uids)
    if n_scans == 0:
        raise DataError("no scans to evaluate: the annotations, predictions and series list are all empty")
    marks = _SortedMarks(matches)
    cum_fp, cum_tp = marks.cumulative(np.ones((1, n_scans)))
    n_nodules = int(matches.nodules_per_scan.sum())
    sens_at = _read_at(cum_fp, cum_tp, np.array([n_nodules]), n_scans, FP_RATES)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = cum_tp[0] / n_nodules if n_nodules else np.full(cum_tp.shape[1], np.nan)
    return FrocResult(
        fps_per_scan=cum_fp[0] / n_scans, sensitivity=sensitivity, thresholds=marks.thresholds,
        cpm=float(sens_at.mean()), sensitivity_at=dict(zip(FP_RATES, map(float, sens_at))),
        n_scans=n_scans, n_nodules=n_nodules, n_found=int(matches.mark_is_nodule.sum()),
        n_false_positives=int((~matches.mark_is_nodule).sum()), n_candidates=matches.n_candidates,
        n_scored=matches.n_scored,
        ci=bootstrap_froc(matches, n_bootstraps, seed) if n_bootstraps > 0 else None)


def compute_froc(series_uids: Sequence[str] | np.ndarray, centers_xyz: np.ndarray, probabilities: np.ndarray,
                 annotations: Findings, excluded: Findings | None = None,
                 series_list: Sequence[str] | None = None, n_bootstraps: int = 0, seed: int = 0) -> FrocResult:
    """Score predictions by the LUNA16 rules: :func:`match_candidates` then :func:`froc_from_matches`.

    Args are those of :func:`match_candidates`, plus ``n_bootstraps`` (0: no interval) and ``seed``.
    Note the default ``series_list``: every annotated scan is evaluated, so pass the validation
    scans when the predictions cover only those.
    """
    matches = match_candidates(series_uids, centers_xyz, probabilities, annotations, excluded, series_list)
    return froc_from_matches(matches, n_bootstraps, seed)
