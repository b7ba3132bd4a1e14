"""Paired statistics (ratlit.analysis.paired) on synthetic per-image scores whose answer is known."""

import numpy as np
import pytest

from ratlit.analysis.paired import (
    Scores,
    bootstrap_differences,
    compare,
    decimals,
    group_note,
    image_set_note,
    read_per_image,
    verdict,
    wilcoxon_p,
)


def _scores(psnr: np.ndarray, seeds: list, names: list[str] | None = None) -> Scores:
    """``psnr[seed, image]`` as a variant (SSIM a fixed function of it, input 5 dB lower)."""
    psnr = np.atleast_2d(psnr)
    names = names or [f"img{i}" for i in range(psnr.shape[1])]
    tables = [{n: {"psnr": float(p), "ssim": float(p) / 100, "input_psnr": float(p) - 5, "input_ssim": 0.3}
               for n, p in zip(names, row, strict=True)} for row in psnr]
    return Scores(tables, seeds)


def _images(count: int = 60, seed: int = 0) -> np.ndarray:
    return 37 + 4.7 * np.random.default_rng(seed).standard_normal(count)  # images differ by ~4.7 dB


def test_a_constant_gain_is_resolved_despite_the_spread_of_images():
    base = _images()
    row = compare(_scores(base + 0.5, [0]), _scores(base, [0]), "psnr", resamples=2000)
    assert row["mean"] == pytest.approx(0.5) and row["std"] == pytest.approx(0.0, abs=1e-9)
    assert row["ci_low"] == pytest.approx(0.5) and row["ci_high"] == pytest.approx(0.5)
    assert row["verdict"] == "higher" and row["wilcoxon_p"] < 1e-6
    assert (row["images"], row["groups"], row["seeds"], row["interval_over"]) == (60, 60, 1, "groups and images")
    worse = compare(_scores(base - 0.003, [0]), _scores(base, [0]), "psnr", resamples=2000)
    assert worse["verdict"] == "equivalent"  # constant but below the smallest effect: never called lower
    assert compare(_scores(base - 0.003, [0]), _scores(base, [0]), "psnr", resamples=2000,
                   min_effect=0.001)["verdict"] == "lower"
    ssim = compare(_scores(base + 0.5, [0]), _scores(base, [0]), "ssim", resamples=2000)
    assert ssim["mean"] == pytest.approx(0.005)


def test_noise_around_zero_is_not_resolved():
    base = _images()
    noise = 0.01 * np.random.default_rng(1).standard_normal(30)
    symmetric = base + np.concatenate([noise, -noise])  # per-image differences with mean exactly 0
    row = compare(_scores(symmetric, [0]), _scores(base, [0]), "psnr", resamples=4000, min_effect=0.0)
    assert row["mean"] == pytest.approx(0.0, abs=1e-12)
    assert row["ci_low"] < 0 < row["ci_high"] and row["verdict"] == "not resolved"
    within = compare(_scores(symmetric, [0]), _scores(base, [0]), "psnr", resamples=4000)  # inside +-0.01 dB
    assert within["verdict"] == "equivalent"
    assert row["wilcoxon_p"] > 0.5
    assert row["ci_high"] - row["ci_low"] < 0.02  # the interval follows the differences (0.01), not the images (4.7)


def test_seed_to_seed_spread_widens_the_interval():
    base = _images()
    gains = np.array([0.3, -0.1, 0.2])  # each seed's gain: the training noise a single seed hides
    reference = _scores(base, [None])
    one = compare(_scores(base + 0.3, [0]), reference, "psnr", resamples=4000)
    three = compare(_scores(base[None] + gains[:, None], [0, 1, 2]), reference, "psnr", resamples=4000)
    assert one["verdict"] == "higher"
    assert three["mean"] == pytest.approx(gains.mean())
    assert three["interval_over"] == "groups, images and seeds" and three["seeds"] == 3
    assert three["ci_low"] < 0 < three["ci_high"] and three["verdict"] == "not resolved"
    assert three["ci_low"] == pytest.approx(-0.1, abs=0.05) and three["ci_high"] == pytest.approx(0.3, abs=0.05)


def test_shared_seeds_are_paired():
    """When the same seeds trained both, a seed effect common to both cancels; with unrelated seeds it cannot."""
    base = _images()
    seed_effect = np.array([-1.0, 0.0, 1.0])[:, None]
    reference = base[None] + seed_effect
    paired = compare(_scores(reference + 0.5, [0, 1, 2]), _scores(reference[[2, 0, 1]], [2, 0, 1]), "psnr",
                     resamples=2000)
    assert paired["seed_pairing"] == "paired"
    assert (paired["ci_low"], paired["ci_high"]) == pytest.approx((0.5, 0.5))
    unpaired = compare(_scores(reference + 0.5, [3, 4, 5]), _scores(reference, [0, 1, 2]), "psnr", resamples=2000)
    assert unpaired["seed_pairing"] == "independent" and unpaired["ci_high"] - unpaired["ci_low"] > 0.5


def test_the_bootstrap_is_reproducible_and_seeded():
    v, r = np.random.default_rng(2).standard_normal((2, 3, 40))
    first = bootstrap_differences(v, r, paired_seeds=False, resamples=1200, seed=7)
    assert first.shape == (1200,)
    assert np.array_equal(first, bootstrap_differences(v, r, paired_seeds=False, resamples=1200, seed=7))
    assert not np.array_equal(first, bootstrap_differences(v, r, paired_seeds=False, resamples=1200, seed=8))
    assert abs(first.mean() - (v.mean() - r.mean())) < 0.05
    with pytest.raises(ValueError, match="images"):
        bootstrap_differences(v, r[:, :10], paired_seeds=False)


def test_images_are_matched_by_name_and_mismatches_reported():
    base = _images(6)
    names = [f"img{i}" for i in range(6)]
    shuffled = _scores((base + 0.2)[::-1], [0], names[::-1])  # the same images listed in another order
    assert compare(shuffled, _scores(base, [0], names), "psnr", resamples=500)["mean"] == pytest.approx(0.2)
    assert image_set_note("a", shuffled, _scores(base, [0], names), "ref") is None
    fewer = _scores(base[:4] + 0.2, [0], names[:4])
    row = compare(fewer, _scores(base, [0], names), "psnr", resamples=500)
    assert row["images"] == 4 and row["mean"] == pytest.approx(0.2)
    note = image_set_note("a", fewer, _scores(base, [0], names), "ref")
    assert note.startswith("a: 0 image(s) only in it, 2 only in ref") and "4 common" in note
    other = _scores(base, [0], [f"x{i}" for i in range(6)])
    none = compare(other, _scores(base, [0], names), "psnr", resamples=500)
    assert none["verdict"] == "no common images" and np.isnan(none["mean"])


def test_wilcoxon_without_any_difference_is_one():
    assert wilcoxon_p(np.zeros(5)) == 1.0
    assert wilcoxon_p(np.full(20, 0.1)) < 1e-4


def test_per_image_file_is_read_and_refused_clearly(tmp_path):
    good = tmp_path / "test_results.csv"
    good.write_text("name,psnr,ssim,input_psnr,input_ssim,psnr_gain,ssim_gain\na,30,0.9,25,0.8,5,0.1\n")
    assert read_per_image(good) == {"a": {"psnr": 30.0, "ssim": 0.9, "input_psnr": 25.0, "input_ssim": 0.8,
                                          "group": "a"}}  # written before groups: each image its own
    twice = tmp_path / "twice.csv"
    twice.write_text("name,psnr,ssim,input_psnr,input_ssim\na,30,0.9,25,0.8\na,31,0.9,25,0.8\n")
    with pytest.raises(ValueError, match="twice.csv: image 'a' appears twice"):
        read_per_image(twice)
    short = tmp_path / "short.csv"
    short.write_text("name,psnr\na,30\n")
    with pytest.raises(ValueError, match="short.csv: missing column"):
        read_per_image(short)


def test_the_report_does_not_depend_on_the_order_runs_and_images_are_read():
    rng = np.random.default_rng(3)
    names = [f"img{i}" for i in range(12)]
    tables = [{n: {"psnr": 40 + rng.normal(), "ssim": 0.9} for n in names} for _ in range(3)]
    reference = Scores([{n: {"psnr": 40.0, "ssim": 0.9} for n in names}] * 3, ["0", "1", "2"])
    first = compare(Scores(tables, ["0", "1", "2"]), reference, "psnr", resamples=500)
    shuffled = [dict(reversed(list(t.items()))) for t in reversed(tables)]
    second = compare(Scores(shuffled, ["2", "1", "0"]), reference, "psnr", resamples=500)
    assert (first["ci_low"], first["ci_high"]) == (second["ci_low"], second["ci_high"])


def _grouped(psnr: np.ndarray, groups: list[str], seeds: list) -> Scores:
    psnr = np.atleast_2d(psnr)
    tables = [{f"img{i}": {"psnr": float(p), "ssim": 0.9, "input_psnr": 30.0, "input_ssim": 0.8, "group": g}
               for i, (p, g) in enumerate(zip(row, groups, strict=True))} for row in psnr]
    return Scores(tables, seeds)


def test_images_of_one_patient_are_resampled_as_one_group():
    """Ten slices each of 4 patients; each patient's gain differs: the slices do not make it 40 patients."""
    rng = np.random.default_rng(4)
    groups = [f"P{i // 10}" for i in range(40)]
    patient_gain = np.repeat([0.3, -0.2, 0.25, 0.02], 10)
    base = 37 + rng.normal(0, 3, 40)
    variant = base + patient_gain + rng.normal(0, 0.002, 40)
    by_group = compare(_grouped(variant, groups, [0]), _grouped(base, groups, [0]), "psnr", resamples=4000)
    as_images = compare(_grouped(variant, [f"i{i}" for i in range(40)], [0]), _grouped(base, groups, [0]), "psnr",
                        resamples=4000)
    assert (by_group["groups"], by_group["images"]) == (4, 40) and as_images["groups"] == 40
    assert by_group["ci_high"] - by_group["ci_low"] > 1.5 * (as_images["ci_high"] - as_images["ci_low"])
    assert by_group["verdict"] == "not resolved"
    one = compare(_grouped(variant[:10], groups[:10], [0]), _grouped(base[:10], groups[:10], [0]), "psnr",
                  resamples=500)
    assert one["groups"] == 1 and "one group" in group_note("a", {**one, "metric": "psnr"})


def test_verdicts_against_the_smallest_effect_and_their_digits():
    assert verdict(0.02, 0.05, 0.01) == "higher" and verdict(-0.05, -0.02, 0.01) == "lower"
    assert verdict(0.005, 0.05, 0.01) == "not resolved"  # may be smaller than the minimum: not called higher
    assert verdict(-0.004, 0.006, 0.01) == "equivalent" and verdict(-0.004, 0.02, 0.01) == "not resolved"
    # +3.4e-5 dB in [2.5e-6, 6.7e-5]: printed apart from 0 and from the minimum, never "+0.0000 [+0.0000, +0.0001]"
    digits = decimals(2.5e-6, 6.7e-5, 0.01)
    assert f"{2.5e-6:+.{digits}f}" != f"{0:+.{digits}f}" and digits >= 7


def test_only_seeds_run_on_both_sides_are_paired():
    base = _images(20)
    variant = _scores(np.stack([base + 0.5] * 3), [0, 1, 2])
    reference = _scores(np.stack([base] * 2), [0, 1])
    row = compare(variant, reference, "psnr", resamples=500)
    assert (row["seeds"], row["reference_seeds"], row["seeds_left_out"], row["seed_pairing"]) == (2, 2, 1, "paired")
