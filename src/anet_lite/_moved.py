"""Modules that moved keep their old import paths: ``import anet_lite.tombstone`` gives
``anet_lite.records.tombstone`` itself (the same module object), imported only when asked.

``install()`` puts one finder on ``sys.meta_path``; it answers only for the names in
``MOVED``. Nothing is imported ahead of use, so ``import anet_lite`` stays NumPy-only.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any, Dict, Optional, Sequence

# old name -> where the module lives now
MOVED: Dict[str, str] = {
    "anet_lite.tombstone": "anet_lite.records.tombstone",
    "anet_lite.outputs": "anet_lite.records.outputs",
    "anet_lite.forgetting": "anet_lite.records.forgetting",
    "anet_lite.demo": "anet_lite.cli.demo",
    "anet_lite.policy": "anet_lite.monitor.policy",
    "anet_lite.explain": "anet_lite.monitor.explain",
    "anet_lite.causes": "anet_lite.monitor.causes",
    "anet_lite.detectors": "anet_lite.monitor.detectors",
}


def new_name(fullname: str) -> Optional[str]:
    """Where the module ``fullname`` lives now: a moved module, or a submodule of a moved
    package (``anet_lite.detectors.loss_cusum`` -> ``anet_lite.monitor.detectors.
    loss_cusum``); None for every other name."""
    if fullname in MOVED:
        return MOVED[fullname]
    for old, new in MOVED.items():
        if fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder and loader of the old names: the module is the new one, unchanged."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Any = None
    ) -> Any:
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> ModuleType:
        module = importlib.import_module(new_name(spec.name) or spec.name)
        self._specs = getattr(self, "_specs", {})
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system set the old name's spec on the module: give it its own back.
        for old, spec in list(getattr(self, "_specs", {}).items()):
            if sys.modules.get(old) is module:
                module.__spec__ = spec
                del self._specs[old]


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    # first in line: a submodule of a moved package would otherwise be found again by the
    # path finder under its old name, as a second module object
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())


def moved_attribute(package: str, name: str) -> ModuleType:
    """``anet_lite.<name>`` for an old module name (``AttributeError`` otherwise)."""
    full = f"{package}.{name}"
    if full not in MOVED:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return importlib.import_module(full)
