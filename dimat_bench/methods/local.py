"""The floor and the ceiling: agents that keep training on their own shards and never communicate
(`local`), and one model trained on the union of all their shards (`centralized`)."""

from __future__ import annotations

from .base import Method, register


@register("local")
class Local(Method):
    """No communication. Trains with the merge family's optimizer defaults (Adam, re-created every
    round), so it is DIMAT with the merge taken out."""

    family = "local"
    supports_networks = True  # it never communicates: the network changes nothing


@register("centralized")
class Centralized(Local):
    """The ceiling: one model trained on the union of the N agents' shards, with the same optimizer,
    batch size and epochs per round, so that each round it processes as many training images as the
    whole population; it starts from a pretraining on that union (`pretrain --union`: agent 0's
    init, the agents' epochs). Nothing to communicate, nothing to merge."""

    pretraining = "union"
