"""Importing a package's modules, so that what registers itself on import (a measure, an objective) needs only
its own file."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def import_submodules(package: ModuleType) -> list[ModuleType]:
    """Every module of `package` and of its subpackages, imported, in name order."""
    found = pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    return [importlib.import_module(info.name) for info in sorted(found, key=lambda info: info.name)]
