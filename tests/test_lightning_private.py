"""Lightning's private members that ratlit still uses, listed in one place (``PRIVATE``): each must exist in the
installed Lightning, so an upgrade that drops or renames one fails here by name rather than silently in a run
(a ``last.ckpt`` not written, a preemption not saved), and no other private Lightning member may be used
without being listed here."""

import ast
import functools
import importlib
import inspect
import textwrap
import types
from pathlib import Path

import lightning
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ratlit"
LIGHTNING = Path(lightning.__file__).resolve().parent

# (module that uses it, the Lightning class that holds it, member): uses with no public API in Lightning.
PRIVATE = [
    # last.ckpt at every validation, every N steps and at an interrupt: ModelCheckpoint writes it only with a new
    # best, and has no public method that writes it.
    ("ratlit.training.checkpoint_saving", "ModelCheckpoint", "_save_last_checkpoint"),
    ("ratlit.training.checkpoint_saving", "ModelCheckpoint", "_monitor_candidates"),
    ("ratlit.training.checkpoint_saving", "ModelCheckpoint", "_save_checkpoint"),
    ("ratlit.training.checkpoint_saving", "ModelCheckpoint", "_last_global_step_saved"),
    ("ratlit.training.checkpoint_saving", "ModelCheckpoint", "_last_checkpoint_saved"),
    # A metrics.csv that survives a resume: Lightning's CSV writer deletes it on start and rewrites it in place.
    ("ratlit.training.loggers", "ExperimentWriter", "_check_log_dir_exists"),
    ("ratlit.training.loggers", "ExperimentWriter", "_rewrite_with_new_header"),
    ("ratlit.training.loggers", "CSVLogger", "_experiment"),
    # The logging step after a resume at the last step's validation (see MetricsFromRestoredStep).
    ("ratlit.training.loggers", "_TrainingEpochLoop", "_batches_that_stepped"),
]


def _owners(tmp_path: Path) -> dict[str, object]:
    """An instance of each class named in PRIVATE (instance attributes exist only on instances)."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return {"ModelCheckpoint": ModelCheckpoint(dirpath=tmp_path / "checkpoints"),
            "ExperimentWriter": ExperimentWriter(str(tmp_path / "csv")),
            "CSVLogger": CSVLogger(tmp_path),
            "_TrainingEpochLoop": trainer.fit_loop.epoch_loop}


def test_every_private_lightning_member_in_use_still_exists(tmp_path):
    owners = _owners(tmp_path)
    gone = []
    for module, owner, member in PRIVATE:
        instance = owners[owner]
        if type(instance).__name__ != owner:
            gone.append(f"{owner} (now {type(instance).__name__}), whose {member} {module} uses")
        elif not hasattr(instance, member):
            gone.append(f"{owner}.{member}, which {module} uses")
    assert not gone, (f"lightning {lightning.__version__} no longer has: {'; '.join(gone)}. Adapt those modules "
                      "(or keep pyproject's upper bound on lightning below this version).")


def test_the_installed_lightning_is_in_pyprojects_range():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]
    required = next(r for r in map(Requirement, project["dependencies"]) if r.name == "lightning")
    assert required.specifier.contains(lightning.__version__), (
        f"lightning {lightning.__version__} is outside pyproject's {required}: test this version (this file first), "
        "then move the bound")


# ------------------------------------------------------------------------ finding the private members ratlit uses


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and not name.endswith("_")


def _defined_names(tree: ast.AST) -> set[str]:
    """Private names a piece of code defines: functions, class attributes and attributes it sets on ``self``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if _private(n)}


@functools.cache
def _lightning_private_names() -> frozenset[str]:
    """Every private name Lightning's trainer and fabric define, for uses whose object's class is not known."""
    names = set()
    for folder in ("pytorch", "fabric"):
        for path in (LIGHTNING / folder).rglob("*.py"):
            names |= _defined_names(ast.parse(path.read_text()))
    return frozenset(names)


@functools.cache
def _lightning_members(cls: type) -> dict[str, str]:
    """Private member -> the nearest Lightning class in ``cls``'s MRO that defines it."""
    members: dict[str, str] = {}
    for base in cls.__mro__:
        if base.__module__.split(".")[0] != "lightning":
            continue
        names = {n for n in vars(base) if _private(n)}
        try:
            names |= _defined_names(ast.parse(textwrap.dedent(inspect.getsource(base))))
        except (OSError, TypeError):
            pass
        for name in names:
            members.setdefault(name, base.__name__)
    return members


class _Uses(ast.NodeVisitor):
    """Private Lightning members one ratlit module touches: as ``self``'s members in a class derived from a
    Lightning class (overridden, read, set or called through ``super()``), on other objects by name, and imported.
    Also collects the private names the module defines itself (``own``)."""

    def __init__(self, module: object) -> None:
        self.module = module
        self.classes: list[type | None] = []
        self.found: dict[str, int] = {}  # member -> first line
        self.unknown: dict[str, int] = {}  # private names on objects of unknown class
        self.own: set[str] = set()

    def _cls(self) -> type | None:
        return self.classes[-1] if self.classes else None

    def _member(self, name: str, line: int, on_self: bool) -> None:
        if not _private(name):
            return
        cls = self._cls()
        if on_self and cls is not None:
            if name in _lightning_members(cls):
                self.found.setdefault(name, line)
            return
        self.unknown.setdefault(name, line)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        outer = self.classes[-1] if self.classes else self.module
        cls = getattr(outer, node.name, None)
        self.classes.append(cls if isinstance(cls, type) else None)
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(item.name):
                if cls is not None and item.name in _lightning_members(cls):
                    self.found.setdefault(item.name, item.lineno)  # overrides a private Lightning method
        self.generic_visit(node)
        self.classes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        cls = self._cls()
        if _private(node.name) and not (cls is not None and node.name in _lightning_members(cls)):
            self.own.add(node.name)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Attribute(self, node: ast.Attribute) -> None:
        value = node.value
        on_self = (isinstance(value, ast.Name) and value.id in ("self", "cls")) or (
            isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super")
        cls = self._cls()
        if on_self and isinstance(node.ctx, ast.Store) and _private(node.attr):
            if not (cls is not None and node.attr in _lightning_members(cls)):
                self.own.add(node.attr)
        self._member(node.attr, node.lineno, on_self)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            self._member(node.args[1].value, node.lineno, False)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store) and _private(node.id):
            self.own.add(node.id)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if (node.module or "").split(".")[0] == "lightning":
            for part in node.module.split(".")[1:]:
                if _private(part):
                    self.found.setdefault(part, node.lineno)
            for alias in node.names:
                if _private(alias.name):
                    self.found.setdefault(alias.name, node.lineno)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "lightning":
                for part in alias.name.split(".")[1:]:
                    if _private(part):
                        self.found.setdefault(part, node.lineno)


def _private_lightning_uses() -> dict[tuple[str, str], str]:
    """(module, member) -> 'path:line' for every private Lightning member src/ratlit uses."""
    scans = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("ratlit", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        has_class = any(isinstance(n, ast.ClassDef) for n in ast.walk(tree))
        uses = _Uses(importlib.import_module(name) if has_class else None)
        uses.visit(tree)
        scans[name] = (path, uses)
    own = set().union(*(uses.own for _, uses in scans.values()))
    found = {}
    for name, (path, uses) in scans.items():
        where = path.relative_to(PACKAGE.parents[1])
        for member, line in uses.found.items():
            found[(name, member)] = f"{where}:{line}"
        for member, line in uses.unknown.items():
            if member in _lightning_private_names() and member not in own:
                found.setdefault((name, member), f"{where}:{line}")
    return found


def test_no_private_lightning_member_is_used_unlisted():
    found = _private_lightning_uses()
    listed = {(module, member) for module, _, member in PRIVATE}
    unlisted = [f"{where} ({module}) uses Lightning's private {member}" for (module, member), where in found.items()
                if (module, member) not in listed]
    assert not unlisted, ("use Lightning's public API instead, or, where it has none, add the member to PRIVATE in "
                          f"{Path(__file__).name}: " + "; ".join(sorted(unlisted)))
    stale = sorted(f"{module}: {member}" for module, member in listed - set(found))
    assert not stale, f"listed in PRIVATE but no longer used (remove them): {stale}"


@pytest.mark.parametrize("source, member", [
    ("class C(ModelCheckpoint):\n    def _save_checkpoint(self, trainer, filepath):\n        pass\n",
     "_save_checkpoint"),
    ("class C(ModelCheckpoint):\n    def f(self):\n        return self._last_global_step_saved\n",
     "_last_global_step_saved"),
    ("def f(trainer):\n    return trainer._accelerator_connector\n", "_accelerator_connector"),
    ("def f(trainer):\n    return getattr(trainer, '_signal_connector')\n", "_signal_connector"),
    ("from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector\n", "_SignalConnector"),
])
def test_the_scan_finds_each_kind_of_use(source, member):
    from lightning.pytorch.callbacks import ModelCheckpoint

    namespace = {"ModelCheckpoint": ModelCheckpoint}
    exec(compile(source, "<test>", "exec"), namespace)
    module = types.SimpleNamespace(**namespace)
    uses = _Uses(module)
    uses.visit(ast.parse(source))
    assert member in uses.found or (member in uses.unknown and member in _lightning_private_names())
