"""Paired statistics for comparing runs on the same test images: per-image differences against a reference.

Two variants tested on the same images differ far less than the images differ from each other (docs/sweeps.md,
"Reports and paired statistics"), so variants are compared image by image (matched by name). For each variant
against the reference: the mean per-image difference, a 95% bootstrap interval that resamples images (and
seeds, where a variant has several: a hierarchical bootstrap), a Wilcoxon signed-rank p-value on the
per-image differences (seed-averaged), and a verdict by the rule ``RULE``. The bootstrap uses a seeded
generator, so a report is reproducible.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

METRICS = ("psnr", "ssim")
SCORE_COLUMNS = ("psnr", "ssim", "input_psnr", "input_ssim")
RULE = "resolved when the 95% bootstrap interval of the mean per-image difference excludes 0"
RESAMPLES = 10000
_CHUNK = 500  # bootstrap resamples per block (bounds memory: block x images counts)


def read_per_image(path: Path) -> dict[str, dict[str, float]]:
    """``test_results.csv`` as ``{image name: {psnr, ssim, input_psnr, input_ssim}}``."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("name", *SCORE_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        table: dict[str, dict[str, float]] = {}
        for row in reader:
            if row["name"] in table:
                raise ValueError(f"{path}: image {row['name']!r} appears twice; images are matched by name")
            try:
                table[row["name"]] = {c: float(row[c]) for c in SCORE_COLUMNS}
            except ValueError as err:
                raise ValueError(f"{path}: image {row['name']!r}: {err}") from err
    if not table:
        raise ValueError(f"{path}: no images")
    return table


@dataclass
class Scores:
    """Per-image scores of one variant: ``tables[k]`` is seed ``seeds[k]``'s ``{name: scores}``."""

    tables: list[dict[str, dict[str, float]]]
    seeds: list[str | None]

    def __post_init__(self) -> None:
        # Seeds in one order, whatever order the runs were read in: the bootstrap's draws, and so a report's
        # intervals, depend on the rows' order.
        order = sorted(range(len(self.seeds)), key=lambda k: str(self.seeds[k]))
        self.tables = [self.tables[k] for k in order]
        self.seeds = [self.seeds[k] for k in order]

    def names(self) -> list[str]:
        """The images every seed was tested on, sorted (the report does not depend on the order files list them)."""
        common = set.intersection(*(set(t) for t in self.tables))
        return sorted(common)

    def matrix(self, metric: str, names: Sequence[str]) -> np.ndarray:
        """``[seeds, images]`` scores of ``metric`` on ``names``."""
        return np.array([[t[n][metric] for n in names] for t in self.tables], dtype=np.float64)

    def as_input(self) -> Scores:
        """The input's (LQ) scores on this variant's images as a one-seed variant (the input has no seed)."""
        table = {n: {"psnr": s["input_psnr"], "ssim": s["input_ssim"]} for n, s in self.tables[0].items()}
        return Scores([table], [None])


def _counts(rng: np.random.Generator, blocks: int, size: int) -> np.ndarray:
    """``[blocks, size]`` multiplicities of ``size`` draws with replacement, as weights summing to 1 per row."""
    draws = rng.integers(0, size, (blocks, size)) + size * np.arange(blocks)[:, None]
    return np.bincount(draws.ravel(), minlength=blocks * size).reshape(blocks, size) / size


def bootstrap_differences(variant: np.ndarray, reference: np.ndarray, paired_seeds: bool,
                          resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples]`` bootstrap replicates of mean(variant) - mean(reference) for ``[seeds, images]`` arrays.

    Images are resampled jointly (the comparison is paired by image); seeds are resampled within each side,
    jointly (same draw for both) when ``paired_seeds`` (the same seeds ran both variants)."""
    if variant.shape[1] != reference.shape[1]:
        raise ValueError(f"variant and reference have {variant.shape[1]} and {reference.shape[1]} images")
    if paired_seeds and variant.shape[0] != reference.shape[0]:
        raise ValueError("paired seeds need as many seeds in the variant as in the reference")
    rng = np.random.default_rng(seed)
    images = variant.shape[1]
    out = []
    for start in range(0, resamples, _CHUNK):
        blocks = min(_CHUNK, resamples - start)
        weights = _counts(rng, blocks, images)  # [blocks, images]
        if paired_seeds:
            per_seed = weights @ (variant - reference).T  # [blocks, seeds]: each seed's mean over drawn images
            out.append((_counts(rng, blocks, per_seed.shape[1]) * per_seed).sum(1))
        else:
            v, r = weights @ variant.T, weights @ reference.T
            out.append((_counts(rng, blocks, v.shape[1]) * v).sum(1) - (_counts(rng, blocks, r.shape[1]) * r).sum(1))
    return np.concatenate(out)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of per-image differences (1 when every difference is 0)."""
    if not np.any(differences != 0):
        return 1.0
    return float(wilcoxon(differences).pvalue)


def verdict(low: float, high: float) -> str:
    """``RULE``: the interval excludes 0 (better above it, worse below), else not resolved."""
    if low > 0:
        return "resolved: higher"
    if high < 0:
        return "resolved: lower"
    return "not resolved"


def compare(variant: Scores, reference: Scores, metric: str, resamples: int = RESAMPLES, seed: int = 0,
            level: float = 0.95) -> dict[str, Any]:
    """One comparison on the images both were tested on: mean and std (over images) of the per-image
    difference, the bootstrap interval, the Wilcoxon p-value, the verdict, and the counts."""
    names = [n for n in reference.names() if n in set(variant.names())]
    v_seeds, r_seeds = variant.seeds, reference.seeds
    paired = (len(v_seeds) == len(r_seeds) and None not in v_seeds and sorted(map(str, v_seeds)) ==
              sorted(map(str, r_seeds)))
    row: dict[str, Any] = {"images": len(names), "seeds": len(v_seeds), "reference_seeds": len(r_seeds),
                           "seed_pairing": "paired" if paired else "independent",
                           "interval_over": "seeds and images" if max(len(v_seeds), len(r_seeds)) > 1 else "images"}
    if not names:
        return {**row, "mean": np.nan, "std": np.nan, "ci_low": np.nan, "ci_high": np.nan, "wilcoxon_p": np.nan,
                "verdict": "no common images"}
    v = variant.matrix(metric, names)
    r = reference.matrix(metric, names)
    if paired:  # the same seed on both sides: pair them row by row
        r = r[[list(map(str, r_seeds)).index(str(s)) for s in v_seeds]]
    diffs = v.mean(0) - r.mean(0)  # per image, seed-averaged
    replicates = bootstrap_differences(v, r, paired, resamples, seed)
    low, high = (float(q) for q in np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2]))
    return {**row, "mean": float(diffs.mean()), "std": float(diffs.std()), "ci_low": low, "ci_high": high,
            "wilcoxon_p": wilcoxon_p(diffs), "verdict": verdict(low, high), "differences": diffs}


def image_set_note(label: str, variant: Scores, reference: Scores, reference_label: str) -> str | None:
    """A warning when a variant and its reference (or a variant's seeds) were not tested on the same images."""
    mine, theirs = set(variant.names()), set(reference.names())
    notes = []
    if any(set(t) != set(variant.tables[0]) for t in variant.tables):
        notes.append(f"its seeds were tested on different images ({len(mine)} in common)")
    if any(set(t) != set(reference.tables[0]) for t in reference.tables):
        notes.append(f"the reference's seeds were tested on different images ({len(theirs)} in common)")
    if mine != theirs:
        notes.append(f"{len(mine - theirs)} image(s) only in it, {len(theirs - mine)} only in {reference_label}")
    if not notes:
        return None
    return (f"{label}: " + "; ".join(notes) + f"; compared on the {len(mine & theirs)} common image(s) "
            "(different splits or test sets?)")
