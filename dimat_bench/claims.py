"""A verdict on each of the paper's claims (`claims.yaml`) from a grid's results.

One row per claim per setting it applies to, with our values (mean ± std over seeds, at the paper's
measurement point), the reference value where one is known ("unknown" otherwise) and a verdict. A
claim that one method beats another is judged on the per-seed differences (seeds of a setting share
their pretraining and data split, so the two methods' values pair by seed), by a two-sided paired
t-interval at LEVEL (95 %):

- holds: the interval lies wholly in the claimed direction (above zero), or a reference is matched
  within its tolerance;
- fails: it lies wholly in the other direction, or the reference is missed;
- inconclusive: the interval contains zero, or fewer than MIN_SEEDS seeds pair up (the reason says so);
- uninformative: the baseline cannot be told from chance (aggregate.chance_test: an exact one-sided
  binomial test on the setting's test images), so beating it says only that the method left chance;
  a claim against several baselines that holds only against such baselines does not hold;
- not run: the grid lacks the cells (or the rounds) the claim needs.

docs/engine.md#protocols-measurement-points-and-verdicts says why this test and works an example.
Needs pandas and scipy; reads the tables `aggregate` writes."""

from __future__ import annotations

import functools
import math
import operator
from importlib import resources
from typing import Any, Callable, Mapping

import pandas as pd
import yaml
from scipy.stats import t as student_t

from .aggregate import chance_test, chance_text, setting_label
from .plan import SETTING_KEYS, union_pretraining

VERDICTS = ("holds", "fails", "inconclusive", "uninformative", "not run")
LEVEL = 0.95  # of the paired interval
MIN_SEEDS = 3  # paired seeds a difference needs (with 2 the interval has one degree of freedom: t = 12.7)
COLUMNS = ["claim", "source", "statement", "setting", "ours", "reference", "verdict", "reason"]


def load_claims() -> dict:
    """The claims and references shipped with the package (`dimat_bench/claims.yaml`)."""
    return yaml.safe_load(resources.files("dimat_bench").joinpath("claims.yaml").read_text())


def seed_stats(values: pd.Series) -> tuple[float, float, int]:
    """(mean, std over seeds or NaN for one seed, seeds) of per-seed values."""
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values)


def fmt(mean: float, std: float, unit: str = "") -> str:
    return f"{mean:.2f}{unit}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}{unit}"


def paired_interval(differences: pd.Series, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high) of the two-sided Student t-interval at `level` for the mean of per-seed
    differences: mean ± t_{(1+level)/2, n−1} · sd / √n (sd with n − 1 degrees of freedom)."""
    n = len(differences)
    mean = float(differences.mean())
    half = float(student_t.ppf((1 + level) / 2, n - 1)) * float(differences.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def compare(ours: pd.Series, theirs: pd.Series, baseline: str, floor: tuple | None = None) -> tuple[str, str]:
    """Verdict and a short account of "ours is larger than theirs", each a per-seed Series (index:
    seed), paired on the seeds both ran. `floor` = (the baseline's accuracy in %, classes, test
    images): a baseline that cannot be told from chance makes the comparison `uninformative`."""
    differences = (ours - theirs).dropna()  # aligned on the seed index: only seeds both ran pair up
    n = len(differences)
    if n < MIN_SEEDS:
        mean = float(differences.mean()) if n else math.nan
        verdict, text = "inconclusive", f"{mean:+.2f} vs {baseline} ({n} paired seed{'s' * (n != 1)})"
    else:
        mean, low, high = paired_interval(differences)
        verdict = "holds" if low > 0 else "fails" if high < 0 else "inconclusive"
        text = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] vs {baseline}"
    if floor is not None:
        told, p = chance_test(*floor)
        if not told:
            return "uninformative", f"{text} ({baseline} at chance: {chance_text(*floor, p)})"
    return verdict, text


def combine(verdicts: list[str]) -> str:
    """A claim against several baselines holds only if it holds against each: it fails where it fails
    against one; else it is inconclusive where a difference is, uninformative where a baseline is at
    chance (so a claim that holds only against baselines at chance does not hold)."""
    for verdict in ("fails", "inconclusive", "uninformative"):
        if verdict in verdicts:
            return verdict
    return "holds" if verdicts else "inconclusive"


def setting_sizes(final: pd.DataFrame | None, setting: Mapping[str, Any]) -> tuple[float, float]:
    """(classes, test images) of a setting's cells (final.csv's columns; NaN in a table from before
    they were recorded, which `chance_test` does not test)."""
    if final is None or not {"classes", "test_images"} <= set(final.columns):
        return math.nan, math.nan
    keys = [k for k in SETTING_KEYS if k in setting and k in final]
    cells = final[functools.reduce(operator.and_, (final[k] == setting[k] for k in keys))] if keys else final
    return float(cells["classes"].max()), float(cells["test_images"].max())


def settings(frame: pd.DataFrame, where: Mapping[str, Any]) -> list[dict]:
    """The distinct settings of `frame` that match `where`."""
    rows = frame[SETTING_KEYS].drop_duplicates().to_dict("records")
    return [r for r in rows if all(str(r[k]) == str(v) for k, v in where.items())]


def per_seed(frame: pd.DataFrame, setting: dict, method: str, column: str) -> pd.Series:
    """`column` of `method`'s cells in `setting`, one value per seed."""
    mask = functools.reduce(operator.and_, (frame[k] == v for k, v in setting.items()), frame["method"] == method)
    return frame[mask].set_index("seed")[column]


def early_gain(curve: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the mean gain over the pretrained agents across the first 10 % of rounds (at least
    the first), in points: mean_{r ≤ k} acc(r) − acc(0), k = max(1, ⌊R/10⌋); and that mean accuracy
    itself (`early_pct`, %: what the chance test reads)."""
    keys = SETTING_KEYS + ["method", "seed"]
    rounds = curve.groupby(keys)["round"].transform("max")
    initial = curve[curve["round"] == 0].set_index(keys)["test_acc"]
    early = curve[(curve["round"] >= 1) & (curve["round"] <= (rounds // 10).clip(lower=1))]
    mean = early.groupby(keys)["test_acc"].mean()
    return pd.DataFrame({"gain": 100 * (mean - initial), "early_pct": 100 * mean}).reset_index()


def against_baselines(claim: dict, setting: dict, values: pd.DataFrame, column: str, what: str,
                      accuracy: str, sizes: tuple[float, float]) -> dict:
    """The row of a "method beats its baselines" claim in one setting; `accuracy` is the column of
    `values` (in %) whose mean over seeds the chance test reads for each baseline, `sizes` the
    setting's (classes, test images)."""
    method = claim["method"]
    ours_values = per_seed(values, setting, method, column)
    present = [b for b in claim["baselines"] if len(per_seed(values, setting, b, column))]
    row = {"setting": setting_label(setting), "reference": "unknown"}
    if not len(ours_values) or not present:
        missing = [m for m in [method, *claim["baselines"]] if not len(per_seed(values, setting, m, column))]
        return row | {"ours": "–", "verdict": "not run", "reason": f"the grid has no {', '.join(missing)} cells here"}
    broken = [m for m in [method, *present] if per_seed(values, setting, m, column).isna().any()]
    if broken:  # a diverged or failed cell has no value; averaging the other seeds would hide it
        return row | {"ours": "–", "verdict": "inconclusive",
                      "reason": f"{', '.join(broken)} diverged or failed in some seeds here: no {what} to compare"}
    theirs = {b: per_seed(values, setting, b, column) for b in present}
    judged = [compare(ours_values, theirs[b], b, (float(per_seed(values, setting, b, accuracy).mean()), *sizes))
              for b in present]
    missing = [b for b in claim["baselines"] if b not in present]
    reason = (f"{what}, {method} minus each baseline in points, paired by seed, with its {LEVEL:.0%} "
              "t-interval: " + ", ".join(r for _, r in judged))
    if any(len((ours_values - theirs[b]).dropna()) < MIN_SEEDS for b in present):
        reason += f"; fewer than {MIN_SEEDS} paired seeds: too few to judge a difference"
    reason += f"; not run: {', '.join(missing)}" if missing else ""
    stats = {m: seed_stats(v) for m, v in [(method, ours_values), *theirs.items()]}
    ours_text = "; ".join(f"{m} {fmt(*s[:2])}" for m, s in stats.items())
    return row | {"ours": ours_text, "verdict": combine([v for v, _ in judged]), "reason": reason}


# What a "higher final" claim compares (its `measure`): a final.csv column and how the reason names it.
MEASURES = {"paper": "final accuracy", "after_train": "final accuracy after training",
            "final_merge_average": "the final global merge's accuracy (plain average)",
            "final_merge_aligned": "the final global merge's accuracy (aligned)"}


def higher_final(claim: dict, results: Mapping[str, pd.DataFrame], references: dict) -> list[dict]:
    """The method's last-round accuracy against each baseline's, at the paper's point or, where the
    claim names another `measure` (MEASURES), in that final.csv column."""
    measure = claim.get("measure", "paper")
    if measure not in MEASURES:
        raise ValueError(f"claim {claim['id']}: measure {measure!r}; allowed: {', '.join(MEASURES)}")
    column = f"{measure}_acc"
    if column not in results["final"]:  # a table from before the column existed: nothing to judge
        return []
    final = results["final"].assign(final_pct=100 * results["final"][column])
    rows = []
    for setting in settings(final, claim.get("where", {})):
        cells = final[functools.reduce(operator.and_, (final[k] == v for k, v in setting.items()))]
        ran = cells[cells["method"].isin([claim["method"], *claim["baselines"]])
                    & (cells["status"] == "complete" if "status" in cells else True)]
        if measure.startswith("final_merge") and len(ran) and ran[column].isna().all():  # not "diverged or failed"
            rows.append({"setting": setting_label(setting), "ours": "–", "reference": "unknown", "verdict": "not run",
                         "reason": "its cells ran without the final merge (final_merge: false)"})
            continue
        rows.append(against_baselines(claim, setting, final, "final_pct", MEASURES[measure], "final_pct",
                                      setting_sizes(final, setting)))
    return rows


def larger_early_gain(claim: dict, results: Mapping[str, pd.DataFrame], references: dict) -> list[dict]:
    gains = early_gain(results["curves"])
    return [against_baselines(claim, s, gains, "gain", "early gain over the pretrained agents", "early_pct",
                              setting_sizes(results.get("final"), s))
            for s in settings(gains, claim.get("where", {}))]


def matches_reference(claim: dict, results: Mapping[str, pd.DataFrame], references: dict) -> list[dict]:
    reference = references[claim["reference"]]
    final = results["final"]
    setting = dict(reference["setting"])
    row = {"setting": setting_label(setting),
           "reference": f"{reference['value']:.2f} ± {reference['std']:.2f} ({claim['reference']})"}
    values = 100 * per_seed(final, setting, claim["method"], "paper_acc")
    if not len(values):
        return [row | {"ours": "–", "verdict": "not run", "reason": "the grid does not run this setting"}]
    if values.isna().any():
        return [row | {"ours": "–", "verdict": "inconclusive",
                       "reason": f"{int(values.isna().sum())} of {len(values)} seeds diverged or failed"}]
    rounds = int(per_seed(final, setting, claim["method"], "rounds").max())
    mean, std, _ = seed_stats(values)
    row["ours"] = fmt(mean, std)
    if rounds != claim["rounds"]:
        return [row | {"verdict": "not run", "reason": f"the reference is after {claim['rounds']} rounds; "
                                                       f"this grid ran {rounds}"}]
    gap = mean - reference["value"]
    verdict = "holds" if abs(gap) <= claim["tolerance"] else "fails"
    return [row | {"verdict": verdict, "reason": f"{gap:+.2f} points from the reference (tolerance "
                                                 f"±{claim['tolerance']})"}]


def fewer_messages(claim: dict, results: Mapping[str, pd.DataFrame], references: dict) -> list[dict]:
    """Per setting the grid ran: the messages each method's cells counted (final.csv's
    `messages_per_agent`, sent, mean over the seeds' complete cells), the method's against each
    baseline's; never from agent counts no cell ran (the communication table is analytic). The
    paper-scale ratio is the reference (`reference_text`)."""
    final = results.get("final")
    if final is None or "messages_per_agent" not in final:
        return []
    ran = final[final["status"] == "complete"] if "status" in final else final
    rows = []
    for setting in settings(ran, claim.get("where", {})):
        cells = ran[functools.reduce(operator.and_, (ran[k] == v for k, v in setting.items()))]
        sent = cells.groupby("method")["messages_per_agent"].mean()
        row = {"setting": setting_label(setting), "reference": claim.get("reference_text", "unknown")}
        present = [b for b in claim["baselines"] if b in sent.index]
        if claim["method"] not in sent.index or not present:
            missing = [m for m in [claim["method"], *claim["baselines"]] if m not in sent.index]
            rows.append(row | {"ours": "–", "verdict": "not run", "reason": f"the grid has no {', '.join(missing)} cells here"})
            continue
        ours = float(sent[claim["method"]])
        counted = "; ".join(f"{m} {float(sent[m]):,.0f}" for m in [claim["method"], *present])
        ratios = [float(sent[b]) / ours if ours else math.inf for b in present]
        fewer = all(float(sent[b]) > ours for b in present)
        rows.append(row | {"ours": f"messages per agent per run, counted by the cells: {counted}",
                           "verdict": "holds" if fewer else "fails",
                           "reason": f"{', '.join(present)} sent {min(ratios):.3g}× to {max(ratios):.3g}× as many messages "
                                     f"as {claim['method']} (mean over the seeds' complete cells)"})
    return rows


def merge_beats_agents(claim: dict, results: Mapping[str, pd.DataFrame], references: dict) -> list[dict]:
    """Per setting and method: the final global merge (`claim["variant"]`) against the mean of the
    agents it merged (after the last round's training), paired by seed."""
    final, column = results["final"], f"final_merge_{claim['variant']}_acc"
    rows = []
    for setting in settings(final, claim.get("where", {})):
        cells = final[functools.reduce(operator.and_, (final[k] == v for k, v in setting.items()))]
        for method in sorted(m for m in cells["method"].unique() if not union_pretraining(m)):  # N agents
            row = {"setting": f"{setting_label(setting)}, {method}", "reference": "unknown"}
            merged = 100 * per_seed(final, setting, method, column) if column in final else pd.Series(dtype=float)
            agents = 100 * per_seed(final, setting, method, "after_train_acc")
            if merged.isna().all():
                rows.append(row | {"ours": "–", "verdict": "not run",
                                   "reason": "its cells ran without the final merge (final_merge: false) or did not "
                                             "complete"})
                continue
            verdict, text = compare(merged, agents, "the agents",
                                    (float(agents.mean()), *setting_sizes(final, setting)))
            reason = (f"the {claim['variant']} final merge minus the agents' mean after training, in points, paired by "
                      f"seed, with its {LEVEL:.0%} t-interval: {text}")
            if len((merged - agents).dropna()) < MIN_SEEDS:
                reason += f"; fewer than {MIN_SEEDS} paired seeds: too few to judge a difference"
            rows.append(row | {"ours": f"merge {fmt(*seed_stats(merged.dropna())[:2])}; agents "
                                       f"{fmt(*seed_stats(agents.dropna())[:2])}", "verdict": verdict, "reason": reason})
    return rows


CHECKS: dict[str, Callable[[dict, Mapping[str, pd.DataFrame], dict], list[dict]]] = {
    "higher_final": higher_final, "larger_early_gain": larger_early_gain, "matches_reference": matches_reference,
    "fewer_messages": fewer_messages, "merge_beats_agents": merge_beats_agents}


def claims_table(results: Mapping[str, pd.DataFrame], data: dict | None = None) -> pd.DataFrame:
    """Every claim against `results` (`final`: aggregate.final_accuracy, `curves`: aggregate.curves at
    the paper point, `communication`: the communication table)."""
    data = data or load_claims()
    rows = []
    for claim in data["claims"]:
        found = CHECKS[claim["check"]](claim, results, data.get("references", {}))
        if not found:
            where = ", ".join(f"{k} {v}" for k, v in claim.get("where", {}).items())
            found = [{"setting": where or "any", "ours": "–", "reference": "unknown", "verdict": "not run",
                      "reason": f"the grid has no setting with {where}"}]
        rows += [{"claim": claim["id"], "source": claim["source"], "statement": claim["statement"], **row}
                 for row in found]
    return pd.DataFrame(rows, columns=COLUMNS)
