"""Decentralized methods as plug-ins. Every module in this package is imported on first use, and each
registers its methods with `@register("name")`; adding a method is adding one module (see
docs/adding-a-method.md). The shared tests in tests/test_methods.py run on every registered method."""

from __future__ import annotations

import importlib
import pkgutil

from ..registry import Registry
from .base import Method, MethodContext, MethodOptions

METHODS: Registry[type[Method]] = Registry("method")


def register(name: str):
    """Class decorator: register a Method subclass under `name`."""

    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return add


def create_method(name: str, context: MethodContext) -> Method:
    return METHODS.get(name)(context)


def method_names() -> list[str]:
    return METHODS.names()


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "MethodContext", "MethodOptions", "create_method", "method_names", "register"]
