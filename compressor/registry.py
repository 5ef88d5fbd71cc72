"""Name → implementation tables that passes, module kinds and export lowerings add themselves to, so
a new one registers instead of editing if/elif chains."""
from __future__ import annotations

from compressor.errors import CompressorError


class Registry(dict):
    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str):
        """Decorator: ``@REGISTRY.register("name")`` over a class or function."""

        def add(obj):
            if name in self:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self[name] = obj
            if isinstance(obj, type):
                obj.registered_name = name  # so an instance can say what it is registered as
            return obj

        return add

    def lookup(self, name: str):
        if name not in self:
            raise CompressorError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]
