"""Named variants: a registered method with some of its options fixed, usable wherever a method name
is (`--method`, a grid row's `methods`, tables, figures, the communication table). Adding one is one
line here; the shared method tests pick it up by themselves."""

from __future__ import annotations

from .base import variant

# Our decentralized DIMAT: both BatchNorm resets and the matching on the agent's own shard (no data
# leaves it: an agent recomputes the statistics of its own model and of each model it received on its
# own images, then matches), no augmentation, BatchNorm momentum restored, every agent merging itself
# under fc.
variant("dimat_local", "dimat", match_data="local", match_augment=False, bn_momentum_cumulative=False,
        fc_merge_once=False)
# Ablations: the same merges matching on the statistics local training left behind (no reset before
# matching; `dimat_stale` is what `dimat` computed before issue 19), so the reset's effect is measured.
variant("dimat_stale", "dimat", bn_reset_before_match=False)
variant("dimat_local_stale", "dimat_local", bn_reset_before_match=False)
variant("wm_reset", "wm", bn_reset=True)  # WM with DIMAT's BatchNorm reset after the merge
# Communication budgets (docs/benchmark.md#communication-budgets): DIMAT and WA merging in
# `merge_budget` rounds (set in the run config, the same for all six) placed early, uniformly or late.
for _method in ("dimat", "wa"):
    for _placement in ("early", "uniform", "late"):
        variant(f"{_method}_{_placement}", _method, merge_schedule=_placement)
# SGP whose links resend what they lost (running-sums push-sum; docs/benchmark.md#networks-as-they-are).
variant("sgp_resend", "sgp", lost_mass="resent")
