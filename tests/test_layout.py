"""The package's shape: every public module says what it exports, and ``_`` means private.

A ``_name`` is private to its module, or, inside a subpackage, to that subpackage; a
``_module`` is private to its package. No module imports another's private name.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Iterator, Tuple

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "anet_lite"

PRIVATE_IMPORTS_ALLOWED: set = set()  # none: keep it that way
NO_ALL_YET: set = set()  # every public module lists its exports


def _modules() -> Iterator[Tuple[str, Path]]:
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), f


def _is_package(name: str) -> bool:
    return (SRC / name.replace(".", "/") / "__init__.py").exists()


def _owner(target: str, name: str) -> str:
    """The package (or module) inside which ``name`` imported from ``target`` may be used."""
    parts = target.split(".")
    if name.startswith("_"):
        if _is_package(target):
            return target  # a private name or submodule of a package
        return target if len(parts) <= 2 else ".".join(parts[:-1])  # top-level module: itself
    private = [i for i, p in enumerate(parts) if p.startswith("_")]
    return ".".join(parts[: private[0]]) if private else ""  # a private module's public name


def _imports(module: str, path: Path) -> Iterator[Tuple[str, str]]:
    """(module imported from, name) for every ``from X import name`` into anet_lite."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "anet_lite" or target.startswith("anet_lite."):
                for alias in node.names:
                    yield target, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("anet_lite."):
                    head, _, last = alias.name.rpartition(".")
                    yield head, last


def test_no_module_imports_another_modules_private_name():
    bad = []
    for module, path in _modules():
        for target, name in _imports(module, path):
            if name.startswith("__") and name.endswith("__"):
                continue
            owner = _owner(target, name)
            if not owner or module == owner or module.startswith(owner + "."):
                continue
            if (module, target, name) not in PRIVATE_IMPORTS_ALLOWED:
                bad.append(f"{module}: from {target} import {name} (private to {owner})")
    assert not bad, "\n".join(bad)


def test_the_private_import_rule_catches_what_it_should():
    assert _owner("anet_lite.metrics", "_entropy_bins") == "anet_lite.metrics"
    assert _owner("anet_lite.readers.csv_files", "_Block") == "anet_lite.readers"
    assert _owner("anet_lite.readers", "_anything") == "anet_lite.readers"
    assert _owner("anet_lite.monitor._stream", "RobustLevel") == "anet_lite.monitor"
    assert _owner("anet_lite._validate", "positive") == "anet_lite"
    assert _owner("anet_lite.cli._common", "err") == "anet_lite.cli"
    assert _owner("anet_lite.records.outputs", "write_atomic") == ""


@pytest.mark.parametrize("module", [m for m, _ in _modules()])
def test_every_public_module_lists_its_exports(module):
    if any(p.startswith("_") for p in module.split(".")) or module in NO_ALL_YET:
        return
    if module.startswith(("anet_lite.torch", "anet_lite.integrations.", "anet_lite.cli.demo")):
        pytest.importorskip("torch")
    if module in ("anet_lite.integrations.lightning",):
        pytest.importorskip("lightning")
    if module in ("anet_lite.integrations.hf",):
        pytest.importorskip("transformers")
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{module} has no __all__"
    assert len(names) == len(set(names)), f"{module}.__all__ repeats a name"
    for name in names:
        assert not name.startswith("_") or name == "__version__", f"{module} exports {name}"
        assert hasattr(mod, name), f"{module}.__all__ lists {name}, which it does not have"


def test_moved_modules_keep_their_old_import_paths():
    import anet_lite
    from anet_lite import _moved

    for old, new in _moved.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
        assert importlib.import_module(new).__spec__.name == new  # its own spec, not the alias
    assert anet_lite.tombstone is importlib.import_module("anet_lite.records.tombstone")
    with pytest.raises(AttributeError):
        anet_lite.no_such_module  # noqa: B018


def test_a_submodule_of_a_moved_package_is_the_same_module_too():
    old = importlib.import_module("anet_lite.detectors.loss_cusum")
    new = importlib.import_module("anet_lite.monitor.detectors.loss_cusum")
    assert old is new and new.__spec__.name == "anet_lite.monitor.detectors.loss_cusum"
