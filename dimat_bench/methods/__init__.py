"""Decentralized methods as plug-ins, registered by name (docs/adding-a-method.md).

Each module below registers its methods with `@register("name")`; `variants.py` registers named
variants (a method with some options fixed). The shared tests in tests/test_methods.py run on every
registered name."""

from __future__ import annotations

from .base import (EVERY_ROUND, EVERY_STEP, METHODS, NEVER, LearningRateOptions, Method, MethodContext, MethodOptions,
                   Schedule, create_method, register, variant)
from . import gossip, local, merge  # noqa: E402,F401  (register the built-in methods)
from . import variants  # noqa: E402,F401  (after the methods they vary)

__all__ = ["EVERY_ROUND", "EVERY_STEP", "METHODS", "NEVER", "LearningRateOptions", "Method", "MethodContext",
           "MethodOptions", "Schedule", "create_method", "register", "variant"]
