"""Named variants: a registered method with some of its options fixed, usable wherever a method name
is (`--method`, a grid row's `methods`, tables, figures, the communication table). Adding one is one
line here; the shared method tests pick it up by themselves."""

from __future__ import annotations

from .base import variant
from .merge import OFFICIAL

variant("dimat_global", "dimat", match_data="global")  # our DIMAT, matching on the whole training set
variant("dimat_official", "dimat", **OFFICIAL)  # the authors' merge: global augmented data, their two switches
variant("wm_noreset", "wm", bn_reset=False)  # the authors' WM: no BatchNorm reset after the merge
