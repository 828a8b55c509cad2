"""Named variants: a registered method with some of its options fixed, usable wherever a method name
is (`--method`, a grid row's `methods`, tables, figures, the communication table). Adding one is one
line here; the shared method tests pick it up by themselves."""

from __future__ import annotations

from .base import variant

# Our decentralized DIMAT: matching and BatchNorm reset on the agent's own shard (no data leaves it),
# no augmentation, BatchNorm momentum restored, every agent merging itself under fc.
variant("dimat_local", "dimat", match_data="local", match_augment=False, bn_momentum_cumulative=False,
        fc_merge_once=False)
variant("wm_reset", "wm", bn_reset=True)  # WM with DIMAT's BatchNorm reset after the merge
