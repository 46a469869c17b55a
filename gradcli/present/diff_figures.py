"""The figures of `gradcli diff` for one pair of arrays, accumulated chunk by chunk.

cosine, relative L2 difference and max |a - b| are computed without overflow: sums are kept
relative to power-of-two scales that grow with the largest value seen, so arrays near 1e308
give their true cosine, where plain float64 sums would give inf/inf = NaN (and clamping that
into [-1, 1] would pass any gate). A figure that is NaN (a non-finite element) or infinite
(beyond float64) stays so: it trips its gate, and JSON gets null plus `nonfinite_figures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _scale(values: np.ndarray) -> float:
    """A power of two at most max |values| (0 for all zeros): dividing by it is exact and
    leaves every |value| below 2, so squares and their sums cannot overflow."""
    top = float(np.max(np.abs(values))) if values.size else 0.0
    return math.ldexp(1.0, math.frexp(top)[1] - 1) if top > 0 else 0.0


@dataclass
class Figures:
    """Running sums over chunks of rows of one key, overflow-free: every sum is kept relative
    to a power-of-two scale (`sa` for a, `sb` for b, `s` = max(sa, sb) for a - b) that grows
    with the largest value seen, so values near 1e308 give the true cosine, not inf/inf.
    A non-finite element makes cosine and rel_diff NaN: undefined, reported as such."""

    dot: float = 0.0  # sum (a/sa)(b/sb)
    aa: float = 0.0  # sum (a/sa)^2
    bb: float = 0.0  # sum (b/sb)^2
    dd: float = 0.0  # sum ((a - b)/s)^2
    max_d: float = 0.0  # max |a - b| / s
    sa: float = 0.0
    sb: float = 0.0
    s: float = 0.0
    max_bad: float = 0.0  # max |a - b| over chunks holding non-finite elements (NaN, inf)
    agree: int = 0
    count: int = 0
    nonfinite: int = 0
    ranks: list[float] = field(default_factory=list)
    overlaps: list[float] = field(default_factory=list)

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        fa = np.asarray(a, np.float64).ravel()
        fb = np.asarray(b, np.float64).ravel()
        bad = int(fa.size - np.count_nonzero(np.isfinite(fa)))
        bad += int(fb.size - np.count_nonzero(np.isfinite(fb)))
        self.nonfinite += bad
        self.agree += int(np.count_nonzero(np.sign(fa) == np.sign(fb)))
        self.count += int(fa.size)
        if not fa.size:
            return
        if bad:  # the sums are moot now (cosine, rel_diff: NaN); max |a - b| is NaN or inf
            with np.errstate(invalid="ignore", over="ignore"):
                worst = float(np.max(np.abs(fa - fb)))
            self.max_bad = worst if math.isnan(worst) else max(self.max_bad, worst)
            return
        self._rescale(max(self.sa, _scale(fa)), max(self.sb, _scale(fb)))
        xa = fa / self.sa if self.sa else fa
        xb = fb / self.sb if self.sb else fb
        d = (fa / self.s - fb / self.s) if self.s else fa - fb
        self.dot += float(xa @ xb)
        self.aa += float(xa @ xa)
        self.bb += float(xb @ xb)
        self.dd += float(d @ d)
        self.max_d = max(self.max_d, float(np.max(np.abs(d))))

    def _rescale(self, sa: float, sb: float) -> None:
        """Move the sums to larger scales (ratios are powers of two: exact)."""
        ra = self.sa / sa if sa else 1.0
        rb = self.sb / sb if sb else 1.0
        s = max(sa, sb)
        rd = self.s / s if s else 1.0
        self.aa *= ra * ra
        self.bb *= rb * rb
        self.dot *= ra * rb
        self.dd *= rd * rd
        self.max_d *= rd
        self.sa, self.sb, self.s = sa, sb, s

    def per_sample(self, a: np.ndarray, b: np.ndarray, top_percent: float) -> None:
        for ra, rb in zip(a, b, strict=True):
            fa = np.abs(np.asarray(ra, np.float64).ravel())
            fb = np.abs(np.asarray(rb, np.float64).ravel())
            self.ranks.append(spearman(fa, fb))
            self.overlaps.append(top_overlap(fa, fb, top_percent))

    def row(self) -> dict[str, Any]:
        """The figures: floats (NaN or inf where undefined or beyond float64), None where
        there is no figure (rel_diff against an all-zero reference)."""
        na, nb = math.sqrt(self.aa), math.sqrt(self.bb)
        if self.nonfinite:
            cosine = rel = math.nan
        elif na == 0 and nb == 0:
            cosine, rel = 1.0, 0.0
        elif na == 0 or nb == 0:
            cosine = 0.0
            rel = None if nb == 0 else (self.s / self.sb) * math.sqrt(self.dd) / nb
        else:
            # rounding can leave |cosine| a hair above 1; clamp only a real number
            cosine = max(-1.0, min(1.0, self.dot / (na * nb)))
            rel = (self.s / self.sb) * (math.sqrt(self.dd) / nb)  # inf beyond float64
        out: dict[str, Any] = {
            "cosine": cosine,
            "rel_diff": rel,
            "max_abs_diff": self.max_bad if self.nonfinite else self.max_d * self.s,
            "sign_agreement": self.agree / self.count if self.count else 1.0,
            "nonfinite": self.nonfinite,
        }
        if self.ranks:
            out["rank_corr"] = float(np.mean(self.ranks))  # NaN when a sample's is undefined
            out["rank_corr_min"] = float(np.min(self.ranks))
            out["top_overlap"] = float(np.mean(self.overlaps))
            out["top_overlap_min"] = float(np.min(self.overlaps))
        return out


FIGURES = ("cosine", "rel_diff", "max_abs_diff", "rank_corr", "rank_corr_min")


def json_figures(row: dict[str, Any]) -> dict[str, Any]:
    """The row for JSON: a NaN or infinite figure becomes null, and `nonfinite_figures` says
    which and what it was ("nan", "inf"), so the record stays valid JSON and still says so."""
    bad = {}
    for key in FIGURES:
        value = row.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            bad[key] = str(value)
            row[key] = None
    if bad:
        row["nonfinite_figures"] = bad
    return row


def rank_average(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-d array, ties given the average of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    edges = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    average = (edges[:-1] + edges[1:] - 1) / 2.0 + 1.0
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(average, np.diff(edges))
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's of the tie-averaged ranks)."""
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan
    ra, rb = rank_average(a), rank_average(b)
    ra -= ra.mean()
    rb -= rb.mean()
    sa, sb = float(ra @ ra), float(rb @ rb)
    if sa == 0 and sb == 0:
        return 1.0
    if sa == 0 or sb == 0:
        return 0.0
    return float(ra @ rb / math.sqrt(sa * sb))


def top_overlap(a: np.ndarray, b: np.ndarray, percent: float) -> float:
    """|top-k of a & top-k of b| / k, k = ceil(percent% of the features), at least 1."""
    n = a.size
    k = max(1, min(n, math.ceil(n * percent / 100.0)))
    top_a = np.argpartition(-a, k - 1)[:k]
    top_b = np.argpartition(-b, k - 1)[:k]
    return len(np.intersect1d(top_a, top_b, assume_unique=True)) / k
