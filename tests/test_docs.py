"""The README and docs/ pages: every relative link reaches a file (and a heading, where it names one), and the
README stays a how-to that a newcomer reads in minutes."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 320

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)


def _prose(text: str) -> str:
    """``text`` without fenced code blocks (links there are examples, not links)."""
    return FENCE.sub("", text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in HEADING.findall(_prose(page.read_text(encoding="utf-8")))}


def relative_links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", _prose(page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # no http:, mailto:


def test_pages_exist():
    assert (ROOT / "README.md").is_file()
    assert len(PAGES) > 1, "docs/ holds no pages"


def test_anchor_follows_github():
    assert anchor("Tiles (`max_tile`, `tile_overlap`)") == "tiles-max_tile-tile_overlap"
    assert anchor("GPU: which kernel `region_impl=auto` runs") == "gpu-which-kernel-region_implauto-runs"
    assert anchor("W&B") == "wb"
    assert anchor("Predict's switches") == "predicts-switches"


def test_relative_links_find_their_targets(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n[a](#top) [b](other.md#x) `[c](missing.md)`\n```\n[d](gone.md)\n```\n"
                    "[e](https://example.org/x.md)\n", encoding="utf-8")
    assert relative_links(page) == ["#top", "other.md#x"]
    assert anchors(page) == {"top"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target} (no file {destination})")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target} (no heading #{fragment} in {destination.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: " + "; ".join(broken)


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference material to a docs/ page")
