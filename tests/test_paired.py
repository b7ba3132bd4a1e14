"""Paired statistics (ratlit.analysis.paired) on synthetic per-image scores whose answer is known."""

import numpy as np
import pytest

from ratlit.analysis.paired import Scores, bootstrap_differences, compare, image_set_note, read_per_image, wilcoxon_p


def _scores(psnr: np.ndarray, seeds: list, names: list[str] | None = None) -> Scores:
    """``psnr[seed, image]`` as a variant (SSIM a fixed function of it, input 5 dB lower)."""
    psnr = np.atleast_2d(psnr)
    names = names or [f"img{i}" for i in range(psnr.shape[1])]
    tables = [{n: {"psnr": float(p), "ssim": float(p) / 100, "input_psnr": float(p) - 5, "input_ssim": 0.3}
               for n, p in zip(names, row)} for row in psnr]
    return Scores(tables, seeds)


def _images(count: int = 60, seed: int = 0) -> np.ndarray:
    return 37 + 4.7 * np.random.default_rng(seed).standard_normal(count)  # images differ by ~4.7 dB


def test_a_constant_gain_is_resolved_despite_the_spread_of_images():
    base = _images()
    row = compare(_scores(base + 0.5, [0]), _scores(base, [0]), "psnr", resamples=2000)
    assert row["mean"] == pytest.approx(0.5) and row["std"] == pytest.approx(0.0, abs=1e-9)
    assert row["ci_low"] == pytest.approx(0.5) and row["ci_high"] == pytest.approx(0.5)
    assert row["verdict"] == "resolved: higher" and row["wilcoxon_p"] < 1e-6
    assert (row["images"], row["seeds"], row["interval_over"]) == (60, 1, "images")
    worse = compare(_scores(base - 0.003, [0]), _scores(base, [0]), "psnr", resamples=2000)
    assert worse["verdict"] == "resolved: lower"  # tiny but constant: resolved, and said to be tiny by its mean
    ssim = compare(_scores(base + 0.5, [0]), _scores(base, [0]), "ssim", resamples=2000)
    assert ssim["mean"] == pytest.approx(0.005)


def test_noise_around_zero_is_not_resolved():
    base = _images()
    noise = 0.01 * np.random.default_rng(1).standard_normal(30)
    symmetric = base + np.concatenate([noise, -noise])  # per-image differences with mean exactly 0
    row = compare(_scores(symmetric, [0]), _scores(base, [0]), "psnr", resamples=4000)
    assert row["mean"] == pytest.approx(0.0, abs=1e-12)
    assert row["ci_low"] < 0 < row["ci_high"] and row["verdict"] == "not resolved"
    assert row["wilcoxon_p"] > 0.5
    assert row["ci_high"] - row["ci_low"] < 0.02  # the interval follows the differences (0.01), not the images (4.7)


def test_seed_to_seed_spread_widens_the_interval():
    base = _images()
    gains = np.array([0.3, -0.1, 0.2])  # each seed's gain: the training noise a single seed hides
    reference = _scores(base, [None])
    one = compare(_scores(base + 0.3, [0]), reference, "psnr", resamples=4000)
    three = compare(_scores(base[None] + gains[:, None], [0, 1, 2]), reference, "psnr", resamples=4000)
    assert one["verdict"] == "resolved: higher"
    assert three["mean"] == pytest.approx(gains.mean())
    assert three["interval_over"] == "seeds and images" and three["seeds"] == 3
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
    assert read_per_image(good) == {"a": {"psnr": 30.0, "ssim": 0.9, "input_psnr": 25.0, "input_ssim": 0.8}}
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
