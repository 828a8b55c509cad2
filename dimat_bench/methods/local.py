"""The floor: agents keep training on their own shards and never communicate."""

from __future__ import annotations

from .base import Method, register


@register("local")
class Local(Method):
    """No communication. Trains with the merge family's optimizer defaults (Adam, re-created every
    round), so it is DIMAT with the merge taken out."""

    family = "local"
