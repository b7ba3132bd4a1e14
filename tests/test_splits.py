"""Splits by a hash of each group's name: stable as data grows; group_by; the DataModule's contract."""

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from ratlit.data import PathologyDataModule, PETDataModule, RestorationDataModule, group_names, split_groups
from ratlit.data.io import write_image
from ratlit.data.splits import group_position
from ratlit.partition import GridPartitioner
from ratlit.utils.config import CONF_DIR

NAMES = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=8)


def _band(group: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    p = group_position(group, seed)
    return "test" if p < test_fraction else "val" if p < test_fraction + val_fraction else "train"


def _split_of(splits: dict) -> dict:
    return {g: name for name, groups in splits.items() for g in groups}


@settings(max_examples=300, deadline=None)
@given(st.sets(NAMES, min_size=1, max_size=30), st.sets(NAMES, min_size=1, max_size=30),
       st.integers(0, 2**31), st.sampled_from([(0.1, 0.2), (0.25, 0.25), (0.0, 0.3), (0.5, 0.1)]))
def test_adding_groups_never_moves_an_existing_one(old, added, seed, fractions):
    val_fraction, test_fraction = fractions
    before = _split_of(split_groups(sorted(old), None, val_fraction, test_fraction, seed))
    after = _split_of(split_groups(sorted(old | added), None, val_fraction, test_fraction, seed))
    by_hash = {g: _band(g, seed, val_fraction, test_fraction) for g in old | added}
    wanted = [name for name, f in (("val", val_fraction), ("test", test_fraction)) if f > 0] + ["train"]
    if all(name in {by_hash[g] for g in old} for name in wanted):  # every split filled by hash: nothing moves
        assert before == {g: by_hash[g] for g in old} and {g: after[g] for g in old} == before
    if after != by_hash:  # small-data borrowing happens only while a wanted split is empty by hash
        assert len(after) >= 3 and any(name not in by_hash.values() for name in wanted)


def test_the_split_is_the_hash_of_each_name_and_holds_its_fractions():
    groups = [f"P{i:05d}" for i in range(4000)]
    splits = split_groups(groups, None, 0.1, 0.2, seed=7)
    assert _split_of(splits) == {g: _band(g, 7, 0.1, 0.2) for g in groups}
    assert abs(len(splits["test"]) / 4000 - 0.2) < 0.025 and abs(len(splits["val"]) / 4000 - 0.1) < 0.02
    assert split_groups(groups, None, 0.1, 0.2, seed=8) != splits
    # a fifth patient added to a PET folder moves none of the first four
    four = split_groups(["P001", "P002", "P003", "P004"], None, 0.25, 0.25, seed=0)
    five = split_groups(["P001", "P002", "P003", "P004", "P005"], None, 0.25, 0.25, seed=0)
    assert {g: s for g, s in _split_of(five).items() if g != "P005"} == _split_of(four)


@pytest.mark.parametrize("seed", range(40))
def test_few_groups_still_get_a_val_and_a_test_group(seed):
    for n in (3, 4, 5):
        splits = split_groups([f"G{i}" for i in range(n)], None, 0.1, 0.2, seed)
        assert all(splits[name] for name in ("train", "val", "test")), (n, splits)
    two = split_groups(["A", "B"], None, 0.1, 0.2, seed)
    assert _split_of(two) == {g: _band(g, seed, 0.1, 0.2) for g in ("A", "B")}  # two groups: nothing borrowed
    assert split_groups([f"G{i}" for i in range(5)], None, 0.0, 0.2, seed)["val"] == []  # not asked for


def test_small_data_borrowing_is_named(caplog):
    with caplog.at_level(logging.WARNING):
        splits = split_groups(["A", "B", "C"], None, 0.1, 0.2, seed=0)
    assert all(splits.values()) and "the hash left the" in caplog.text
    with pytest.raises(ValueError, match="val_fraction .* test_fraction .* train fraction"):
        split_groups(["A", "B", "C"], None, 0.5, 0.5)


def test_group_names_by_regex():
    names = ["slideB_tile01", "slideB_tile02", "slideA_tile01", "img07"]
    assert group_names(names, r"^(slide\w)_") == {"slideB_tile01": "slideB", "slideB_tile02": "slideB",
                                                  "slideA_tile01": "slideA", "img07": "img07"}
    assert group_names(names, r"^slide\w") == {**group_names(names, r"^(slide\w)_")}  # whole match without a group
    assert group_names(names, None) == {n: n for n in names}
    with pytest.raises(ValueError, match=r"data.group_by='\(slide' is not a valid regular expression"):
        PathologyDataModule(group_by="(slide")


def test_tiles_of_a_slide_stay_in_one_split_by_default(tmp_path):
    group_by = OmegaConf.load(CONF_DIR / "task" / "pathology.yaml").data.group_by  # the task's default
    rng = np.random.default_rng(0)
    slides = [f"slide{c}" for c in "ABCDEFGHIJKL"]
    for slide in slides:
        for tile in range(3):
            write_image(tmp_path / "tiles" / f"{slide}_tile{tile:02d}.png", rng.uniform(0, 1, (3, 8, 8)))
    write_image(tmp_path / "tiles" / "img07.png", rng.uniform(0, 1, (3, 8, 8)))
    dm = PathologyDataModule(root=str(tmp_path / "tiles"), cache_dir=str(tmp_path / "cache"),
                             partitioner=GridPartitioner(4), group_by=group_by, val_fraction=0.2, test_fraction=0.3)
    assert {s.group for s in dm.samples()} == {*slides, "img07"}
    split_of = {s.name: name for name in ("train", "val", "test") for s in dm.split_samples(name)}
    assert len(split_of) == 37
    for slide in slides:
        assert len({split_of[f"{slide}_tile{t:02d}"] for t in range(3)}) == 1, slide
    assert len(set(split_of.values())) == 3


def test_the_datamodule_contract_is_enforced(tmp_path):
    class Incomplete(RestorationDataModule):
        task = "incomplete"

        def list_samples(self, root):
            return []

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    dm = PathologyDataModule(root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    dm.setup("predict")  # no predict_dataloader: nothing is listed or loaded (the folder holds no image)
    assert dm.datasets == {}


def test_one_default_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("RATLIT_CACHE", str(tmp_path / "shared"))
    assert PETDataModule().cache_dir == tmp_path / "shared"
    assert OmegaConf.load(CONF_DIR / "paths" / "default.yaml").cache_dir == str(tmp_path / "shared")
    monkeypatch.delenv("RATLIT_CACHE")
    home = OmegaConf.load(CONF_DIR / "paths" / "default.yaml").cache_dir
    assert PETDataModule().cache_dir.as_posix() == home and home.endswith("/.cache/ratlit")
