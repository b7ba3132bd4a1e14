"""The package's shape as a reader relies on it: layers import only downwards, no cycles, short modules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ratlit"
# A module imports from its own area or from areas of a lower rank only (docs/design.md, "Layout of the code").
# inference runs a trained module (training loads it back) and analysis reads what training wrote (and logs to
# W&B as it does).
RANKS = {"utils": 0, "partition": 1, "models": 1, "losses": 2, "data": 2, "training": 3, "inference": 4, "analysis": 4,
         "cli": 5}
ENTRY_RANK = 6  # the python -m ratlit.<command> files and __main__


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rank(area: str) -> int:
    return RANKS.get(area, ENTRY_RANK)


def _imports() -> dict[str, set[str]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("ratlit", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ratlit"):
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("ratlit"))
        found[name] = targets
    return found


def test_nothing_imports_upward_or_sideways():
    wrong = []
    for module, targets in _imports().items():
        area = _area(module)
        for target in targets:
            other = _area(target)
            if other != area and _rank(other) >= _rank(area) and _rank(area) != ENTRY_RANK:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_import_cycle_between_areas():
    edges = {}
    for module, targets in _imports().items():
        for target in targets:
            if _area(target) != _area(module):
                edges.setdefault(_area(module), set()).add(_area(target))
    seen, stack = set(), []

    def visit(area):
        assert area not in stack, f"import cycle: {' -> '.join(stack + [area])}"
        if area in seen:
            return
        stack.append(area)
        for other in edges.get(area, ()):
            visit(other)
        stack.pop()
        seen.add(area)

    for area in list(edges):
        visit(area)


def test_modules_stay_readable():
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in lengths.items() if n > 450}
    assert not long, long
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    entries = [p for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py", "losses.py")]
    assert all(len(p.read_text().splitlines()) <= 8 for p in entries), top  # the top holds entry points only


def test_every_package_and_the_configs_are_installed():
    # pyproject lists the packages (ratlit.conf lies outside src/): a new subpackage must be added there too.
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(("ratlit", *p.parent.relative_to(PACKAGE).parts)) for p in PACKAGE.rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"ratlit.conf"}, "pyproject.toml's packages list is stale"
    assert setuptools["package-dir"]["ratlit.conf"] == "conf" and (ROOT / "conf" / "train.yaml").is_file()


def test_every_command_starts_through_hydra_command_or_says_why_not():
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name in ("__init__.py", "command.py"):
            continue
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "hydra_command(" in text or "hydra_command" in doc, f"{path.name}: how does the command start?"


def test_tests_hold_tests_and_helpers_sit_apart():
    tests = ROOT / "tests"
    strays = [p.name for p in tests.glob("*.py") if not p.name.startswith("test_") and p.name != "conftest.py"]
    assert not strays, f"test helpers belong in tests/helpers/: {strays}"
    assert not list((tests / "helpers").glob("test_*.py")), "tests/helpers/ holds helpers, not tests"
