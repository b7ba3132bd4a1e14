"""Paired statistics for comparing runs on the same test images: per-image differences against a reference.

Two variants tested on the same images differ far less than the images differ from each other (docs/sweeps.md,
"Reports and paired statistics"), so variants are compared image by
image (matched by name). Images of one patient (or slide: the split's group) are not independent: the 95%
bootstrap interval of the mean per-image difference resamples groups, images within each drawn group, and seeds
(a hierarchical bootstrap), so it speaks for new patients, not for new slices of the same ones; how many groups
carry it is reported, and one group is warned about. A Wilcoxon signed-rank p-value on the per-image differences
(seed-averaged) is given beside it. The verdict weighs the interval against a smallest effect of interest
(``MIN_EFFECT``, docs/sweeps.md says why these values): ``RULE``. The bootstrap uses a seeded generator, so a
report is reproducible.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from ratlit.utils.errors import InputError

METRICS = ("psnr", "ssim")
SCORE_COLUMNS = ("psnr", "ssim", "input_psnr", "input_ssim")
# The smallest difference worth a verdict, per metric: the smallest improvement the paper's ablation (Table 4)
# claims, rounded down to one significant digit (docs/sweeps.md, "Smallest effect").
MIN_EFFECT = {"psnr": 0.01, "ssim": 0.0001}
RULE = ("higher / lower when the 95% bootstrap interval lies wholly above +min / below -min, equivalent when it "
        "lies wholly inside [-min, +min], else not resolved")
RESAMPLES = 10000
_CHUNK = 500  # bootstrap resamples per block (bounds memory: block x images counts)


def read_per_image(path: Path) -> dict[str, dict[str, Any]]:
    """``test_results.csv`` as ``{image name: {psnr, ssim, input_psnr, input_ssim, group}}`` (``group``: the
    image's patient or slide; the image's own name in files written before groups were recorded)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("name", *SCORE_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
        table: dict[str, dict[str, float]] = {}
        for row in reader:
            if row["name"] in table:
                raise InputError(f"{path}: image {row['name']!r} appears twice; images are matched by name")
            try:
                table[row["name"]] = {**{c: float(row[c]) for c in SCORE_COLUMNS},
                                      "group": row.get("group") or row["name"]}
            except ValueError as err:
                raise InputError(f"{path}: image {row['name']!r}: {err}") from err
    if not table:
        raise InputError(f"{path}: no images")
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
        table = {n: {"psnr": s["input_psnr"], "ssim": s["input_ssim"], "group": s.get("group", n)}
                 for n, s in self.tables[0].items()}
        return Scores([table], [None])

    def groups(self, names: Sequence[str]) -> list[str]:
        """Each of ``names``'s group (patient, slide), as the first seed's table records it."""
        return [str(self.tables[0][n].get("group", n)) for n in names]

    def only_seeds(self, seeds: Sequence[str | None]) -> Scores:
        """This variant restricted to ``seeds``."""
        keep = [k for k, s in enumerate(self.seeds) if str(s) in {str(x) for x in seeds}]
        return Scores([self.tables[k] for k in keep], [self.seeds[k] for k in keep])


def _counts(rng: np.random.Generator, blocks: int, size: int) -> np.ndarray:
    """``[blocks, size]`` multiplicities of ``size`` draws with replacement, as weights summing to 1 per row."""
    draws = rng.integers(0, size, (blocks, size)) + size * np.arange(blocks)[:, None]
    return np.bincount(draws.ravel(), minlength=blocks * size).reshape(blocks, size) / size


def _image_weights(rng: np.random.Generator, blocks: int, groups: np.ndarray) -> np.ndarray:
    """``[blocks, images]`` weights (rows sum to 1) of a two-stage draw: groups with replacement, then images with
    replacement within each drawn group. ``groups[i]``: image i's group index. With one image per group this is
    the plain image bootstrap."""
    count = int(groups.max()) + 1
    group_times = _counts(rng, blocks, count) * count  # [blocks, groups]: how often each group was drawn
    weights = np.zeros((blocks, groups.size))
    for g in range(count):
        members = np.flatnonzero(groups == g)
        weights[:, members] = group_times[:, g:g + 1] * _counts(rng, blocks, members.size) * members.size
    return weights / weights.sum(1, keepdims=True)


def bootstrap_differences(variant: np.ndarray, reference: np.ndarray, paired_seeds: bool,
                          resamples: int = RESAMPLES, seed: int = 0, groups: Sequence[Any] | None = None
                          ) -> np.ndarray:
    """``[resamples]`` bootstrap replicates of mean(variant) - mean(reference) for ``[seeds, images]`` arrays.

    Groups (``groups[i]``: image i's patient or slide; None: every image its own) are resampled, then images
    within each drawn group, jointly for both sides (the comparison is paired by image); seeds are resampled
    within each side, jointly (same draw for both) when ``paired_seeds`` (the same seeds ran both variants)."""
    if variant.shape[1] != reference.shape[1]:
        raise InputError(f"variant and reference have {variant.shape[1]} and {reference.shape[1]} images")
    if paired_seeds and variant.shape[0] != reference.shape[0]:
        raise InputError("paired seeds need as many seeds in the variant as in the reference")
    images = variant.shape[1]
    labels = list(range(images)) if groups is None else list(groups)
    if len(labels) != images:
        raise InputError(f"{len(labels)} group labels for {images} images")
    index = np.unique(np.array([str(g) for g in labels]), return_inverse=True)[1].reshape(-1)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, resamples, _CHUNK):
        blocks = min(_CHUNK, resamples - start)
        weights = _image_weights(rng, blocks, index)  # [blocks, images]
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


def verdict(low: float, high: float, min_effect: float = 0.0) -> str:
    """``RULE``: higher when the interval lies above ``+min_effect``, lower below ``-min_effect``, equivalent
    inside ``[-min_effect, +min_effect]``, else not resolved. A difference smaller than ``min_effect`` is never
    called higher or lower."""
    if low > min_effect:
        return "higher"
    if high < -min_effect:
        return "lower"
    if min_effect > 0 and -min_effect <= low and high <= min_effect:
        return "equivalent"
    return "not resolved"


def decimals(low: float, high: float, min_effect: float, least: int = 4, most: int = 10) -> int:
    """Decimals that print an interval's ends apart from 0 and from ``+-min_effect`` (what its verdict rests on):
    an interval and its verdict never look contradictory once rounded."""
    gaps = [abs(v - r) for v in (low, high) for r in (0.0, min_effect, -min_effect) if np.isfinite(v)]
    gaps = [g for g in gaps if g > 1e-12]
    if not gaps:
        return least
    return int(min(max(least, np.ceil(-np.log10(min(gaps))) + 1), most))


def common_seeds(variant: Scores, reference: Scores) -> list[str] | None:
    """The seeds both sides ran (sorted), when each side is seeded and they share at least one; else None."""
    if None in variant.seeds or None in reference.seeds:
        return None
    shared = sorted({str(s) for s in variant.seeds} & {str(s) for s in reference.seeds})
    return shared or None


def compare(variant: Scores, reference: Scores, metric: str, resamples: int = RESAMPLES, seed: int = 0,
            level: float = 0.95, min_effect: float | None = None) -> dict[str, Any]:
    """One comparison on the images both were tested on and, where both sides are seeded and share seeds, on
    those seeds only (pairs present on both sides): mean and std (over images) of the per-image difference, the
    bootstrap interval over groups, images and seeds, the Wilcoxon p-value, the verdict against ``min_effect``
    (default ``MIN_EFFECT[metric]``), and the counts (images, groups, seeds)."""
    min_effect = MIN_EFFECT.get(metric, 0.0) if min_effect is None else float(min_effect)
    shared = common_seeds(variant, reference)
    all_v, all_r = len(variant.seeds), len(reference.seeds)
    if shared is not None:
        variant, reference = variant.only_seeds(shared), reference.only_seeds(shared)
    names = [n for n in reference.names() if n in set(variant.names())]
    groups = variant.groups(names)
    v_seeds, r_seeds = variant.seeds, reference.seeds
    paired = shared is not None
    left_out = all_v - len(v_seeds) + all_r - len(r_seeds)
    row: dict[str, Any] = {"images": len(names), "groups": len(set(groups)), "seeds": len(v_seeds),
                           "reference_seeds": len(r_seeds), "seeds_left_out": left_out,
                           "seed_pairing": "paired" if paired else "independent", "min_effect": min_effect,
                           "interval_over": "groups, images and seeds" if max(len(v_seeds), len(r_seeds)) > 1
                           else "groups and images"}
    if not names:
        return {**row, "mean": np.nan, "std": np.nan, "ci_low": np.nan, "ci_high": np.nan, "wilcoxon_p": np.nan,
                "verdict": "no common images"}
    v = variant.matrix(metric, names)
    r = reference.matrix(metric, names)
    if paired:  # the same seed on both sides: pair them row by row
        r = r[[list(map(str, r_seeds)).index(str(s)) for s in v_seeds]]
    diffs = v.mean(0) - r.mean(0)  # per image, seed-averaged
    replicates = bootstrap_differences(v, r, paired, resamples, seed, groups)
    low, high = (float(q) for q in np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2]))
    return {**row, "mean": float(diffs.mean()), "std": float(diffs.std()), "ci_low": low, "ci_high": high,
            "wilcoxon_p": wilcoxon_p(diffs), "verdict": verdict(low, high, min_effect), "differences": diffs}


def group_note(label: str, row: dict[str, Any]) -> str | None:
    """A warning when a comparison's interval rests on one group (all its images from one patient or slide)."""
    if row.get("images", 0) > 1 and row.get("groups") == 1:
        return (f"{label} ({row.get('metric', '').upper() or 'all metrics'}): all {row['images']} compared images "
                "come from one group (patient / slide): the interval speaks for that one patient's slices, not for "
                "new patients")
    return None


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
