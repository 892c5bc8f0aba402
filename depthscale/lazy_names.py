"""Public names of a package loaded on first use (PEP 562), so that importing a light part of the package
does not import what its heavy names need (torch)."""

from __future__ import annotations

from importlib import import_module


def lazy_names(package: str, where: dict[str, str], public: list[str]):
    """(__getattr__, __dir__) for `package`: name -> the module (relative to package, or absolute) that
    defines it, imported when the name is first read."""
    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(where[name], package), name)

    def __dir__():
        return sorted(set(public) | set(where))

    return __getattr__, __dir__
