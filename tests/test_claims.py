"""Verdicts on the paper's claims, every branch on small synthetic result sets, and the paired
t-interval they rest on, against numbers worked by hand."""

import math

import pandas as pd
import pytest

from dimat_bench.claims import LEVEL, MIN_SEEDS, VERDICTS, claims_table, early_gain, load_claims, paired_interval

T_975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # Student t's 97.5 % quantile at 2 degrees of freedom, in closed
# form: (2p − 1) / √(2p(1 − p)); 4.3027, as tables give it

SETTING = {"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 5, "split": "iid", "topology": "ring"}
R1 = {"dataset": "cifar100", "model": "resnet20", "width": 8, "agents": 5, "split": "iid", "topology": "ring"}


def final(values: dict, setting=SETTING, rounds=3, seeds=None) -> pd.DataFrame:
    """A final-accuracy table: method -> per-seed accuracies in % (seeds 0, 1, ... unless `seeds`
    maps a method to its own seed numbers)."""
    seeds = seeds or {}
    rows = [setting | {"method": m, "seed": s, "rounds": rounds, "initial_acc": 0.3, "paper_acc": v / 100}
            for m, accs in values.items() for s, v in zip(seeds.get(m, range(len(accs))), accs)]
    return pd.DataFrame(rows)


def curves(values: dict, setting=SETTING) -> pd.DataFrame:
    """Paper-point curves: method -> per-seed lists of accuracies (%) for rounds 0, 1, ..."""
    rows = [setting | {"method": m, "seed": s, "round": r, "test_acc": a / 100}
            for m, seeds in values.items() for s, accs in enumerate(seeds) for r, a in enumerate(accs)]
    return pd.DataFrame(rows)


def communication(messages: dict) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": n, "topology": t,
                          "method": m, "messages_per_epoch": v}
                         for m, by_n in messages.items() for (n, t), v in by_n.items()])


def one_claim(check, **fields):
    claim = {"id": "X", "source": "src", "statement": "s", "check": check, "method": "dimat",
             "baselines": ["wa", "sgp"]} | fields
    return {"claims": [claim], "references": load_claims()["references"]}


def verdicts(data, **results):
    table = claims_table({"final": results.get("final"), "curves": results.get("curves"),
                          "communication": results.get("communication")}, data)
    return table["verdict"].tolist(), table


@pytest.mark.parametrize("wa,sgp,verdict", [
    ([40, 41, 42], [30, 31, 32], "holds"),  # 10 and 20 points ahead, spread 1
    ([60, 61, 62], [30, 31, 32], "fails"),  # behind WA by more than the spread
    ([49.5, 51.5, 53], [30, 31, 32], "inconclusive"),  # 0.3 points ahead of WA, spread 1.8
])
def test_final_accuracy_against_every_baseline(wa, sgp, verdict):
    result, table = verdicts(one_claim("higher_final"), final=final({"dimat": [50, 51, 52], "wa": wa, "sgp": sgp}))
    assert result == [verdict]
    assert table["ours"][0].startswith("dimat 51.00 ± 1.00; wa") and table["reference"][0] == "unknown"


def test_one_seed_is_inconclusive_and_missing_cells_are_not_run():
    assert verdicts(one_claim("higher_final"), final=final({"dimat": [50], "wa": [10], "sgp": [10]}))[0] == \
        ["inconclusive"]
    result, table = verdicts(one_claim("higher_final"), final=final({"dimat": [50, 51], "local": [10, 11]}))
    assert result == ["not run"] and "wa, sgp" in table["reason"][0]
    result, table = verdicts(one_claim("higher_final", where={"model": "vgg16_bn"}),
                             final=final({"dimat": [50, 51], "wa": [1, 2], "sgp": [1, 2]}))
    assert result == ["not run"] and "model vgg16_bn" in table["reason"][0]
    result, table = verdicts(one_claim("higher_final"), final=final({"dimat": [50, 51, 52], "wa": [40, 41, 42]}))
    assert result == ["holds"] and "not run: sgp" in table["reason"][0]  # judged on the baselines that ran


def test_a_claim_applies_to_each_setting_it_names():
    both = pd.concat([final({"dimat": [50, 51, 52], "wa": [40, 41, 42], "sgp": [1, 2, 3]}),
                      final({"dimat": [50, 51, 52], "wa": [60, 61, 62], "sgp": [1, 2, 3]},
                            SETTING | {"split": "noniid"})])
    assert verdicts(one_claim("higher_final"), final=both)[0] == ["holds", "fails"]
    assert verdicts(one_claim("higher_final", where={"split": "noniid"}), final=both)[0] == ["fails"]


def test_early_gain_is_the_mean_over_the_first_tenth_of_the_rounds():
    # 20 rounds: the first 2 count. dimat gains (5 + 7) / 2 = 6 points, wa 1, sgp 3 (its later rise is too late).
    rise = list(range(20))
    values = {"dimat": [[30, 35, 37] + rise] * 2, "wa": [[30, 31, 31] + rise] * 2,
              "sgp": [[30, 33, 33] + [90] * 20] * 2}
    gains = early_gain(curves(values)).set_index("method")["gain"]
    assert gains["dimat"].tolist() == pytest.approx([6, 6]) and gains["sgp"].tolist() == pytest.approx([3, 3])
    # three seeds: dimat gains 6, 6.5, 7; sgp 3 in each: paired differences 3, 3.5, 4, all far above 0
    values = {m: seeds + seeds[:1] for m, seeds in values.items()}
    values["dimat"] = [[30, 35, 37] + rise, [30, 36, 37] + rise, [30, 36, 38] + rise]
    assert verdicts(one_claim("larger_early_gain"), curves=curves(values))[0] == ["holds"]
    values["wa"] = [[30, 40, 40] + rise] * 3
    assert verdicts(one_claim("larger_early_gain"), curves=curves(values))[0] == ["fails"]


@pytest.mark.parametrize("accs,rounds,verdict", [
    ([67.0, 67.5, 66.5], 100, "holds"), ([60.0, 60.5, 61.0], 100, "fails"), ([67.0, 67.5], 3, "not run")])
def test_the_reference_value(accs, rounds, verdict):
    data = one_claim("matches_reference", reference="R1", rounds=100, tolerance=1.5)
    result, table = verdicts(data, final=final({"dimat": accs}, R1, rounds))
    assert result == [verdict] and table["reference"][0] == "67.12 ± 0.22 (R1)"
    assert verdicts(data, final=final({"dimat": accs}))[0] == ["not run"]  # the grid lacks R1's setting


def sent(messages: dict, setting=SETTING) -> pd.DataFrame:
    """A final table's messages: method -> per-seed messages sent per agent (accuracies far from chance)."""
    return pd.DataFrame([setting | {"method": m, "seed": seed, "rounds": 3, "initial_acc": 0.3, "paper_acc": 0.4,
                                    "messages_per_agent": v, "status": "complete"}
                         for m, values in messages.items() for seed, v in enumerate(values)])


def test_fewer_messages_reads_the_messages_the_cells_counted_never_an_agent_count_no_cell_ran():
    claim = one_claim("fewer_messages", baselines=["sgp", "cdsgd"])
    many_agents = communication({"dimat": {(20, "ring"): 100.0}, "sgp": {(20, "ring"): 40.0}})  # dimat sends more
    result, table = verdicts(claim, final=sent({"dimat": [6, 6, 6], "wa": [6, 6, 6], "sgp": [120, 120, 121]}),
                             communication=many_agents)
    assert result == ["holds"] and table["setting"][0] == "CIFAR-10 resnet20×1 N=5 iid ring"
    assert table["ours"][0] == "messages per agent per run, counted by the cells: dimat 6; sgp 120"
    assert table["reason"][0].startswith("sgp sent 20.1× to 20.1× as many messages as dimat")
    assert verdicts(claim, final=sent({"dimat": [6, 6], "sgp": [6, 6]}))[0] == ["fails"]  # equal is not fewer
    assert verdicts(claim, final=sent({"dimat": [6], "wa": [6]}))[0] == ["not run"]
    assert verdicts(claim, communication=many_agents)[0] == ["not run"]  # no cell ran: no verdict


def test_c5_on_the_quick_grid_reads_its_cells_counted_messages():
    """bundle/quick's final.csv: C5 per setting from the messages its cells counted."""
    from pathlib import Path

    final_table = pd.read_csv(Path(__file__).resolve().parents[1] / "bundle" / "quick" / "tables" / "final.csv",
                              comment="#")
    c5 = next(c for c in load_claims()["claims"] if c["id"] == "C5")
    table = claims_table({"final": final_table, "curves": None, "communication": None},
                         {"claims": [c5], "references": {}})
    assert len(table) == 4 and set(table["verdict"]) == {"holds"}  # iid/noniid × ring/fc
    ring = final_table[(final_table["topology"] == "ring") & (final_table["split"] == "iid")].set_index("method")
    row = table[table["setting"] == "CIFAR-10 resnet20×1 N=5 iid ring"].iloc[0]
    assert row["ours"] == ("messages per agent per run, counted by the cells: "
                           + "; ".join(f"{m} {ring.loc[m, 'messages_per_agent']:,.0f}" for m in ("dimat", "sgp", "cdsgd")))
    assert ring.loc["sgp", "messages_per_agent"] > ring.loc["dimat", "messages_per_agent"]


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), summed term by term (independent of scipy)."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_the_chance_test_is_the_exact_one_sided_binomial_tail_on_the_test_images():
    from dimat_bench.aggregate import chance_test

    told, p = chance_test(12.25, 10, 400)  # 49 of 400 against 40 expected: p ≈ 0.08, not told from chance
    assert not told and p == pytest.approx(binomial_tail(49, 400, 0.1), rel=1e-9)
    told, p = chance_test(13.5, 10, 400)  # 54 of 400: p ≈ 0.015
    assert told and p == pytest.approx(binomial_tail(54, 400, 0.1), rel=1e-9)
    assert chance_test(12.25, 10, 10_000)[0]  # the same accuracy on 10,000 images is told from chance
    assert not chance_test(1.2, 100, 500)[0] and chance_test(3.0, 100, 500)[0]  # CIFAR-100: chance is 1 %
    assert chance_test(10.0, 10, float("nan")) == (True, pytest.approx(float("nan"), nan_ok=True))  # unknown size


def sized(frame: pd.DataFrame, test_images=400, classes=10) -> pd.DataFrame:
    return frame.assign(test_images=test_images, classes=classes)


def test_a_win_over_a_baseline_at_chance_is_uninformative_not_holds():
    """dimat 25-27 % against SGP and WA at 10 %: `holds` on a table without the test set's size (as
    before), `uninformative` with it; and a claim that holds against one informative baseline and
    only an at-chance one besides does not hold."""
    values = {"dimat": [25, 26, 27], "wa": [10.0, 10.25, 9.75], "sgp": [10, 10, 10]}
    claim = one_claim("higher_final")
    assert verdicts(claim, final=final(values))[0] == ["holds"]
    result, table = verdicts(claim, final=sized(final(values)))
    assert result == ["uninformative"]
    p = binomial_tail(40, 400, 0.1)  # 40 of 400 right: what chance gives on average
    assert f"vs sgp (sgp at chance: 10.00 % (chance 10 %; p = {p:.2f}, one-sided binomial test on 400 test images))" \
        in table["reason"][0]
    assert verdicts(claim, final=sized(final(values | {"wa": [20, 20.5, 21]})))[0] == ["uninformative"]
    assert verdicts(claim, final=sized(final(values | {"wa": [20, 20.5, 21], "sgp": [15, 15.5, 16]})))[0] == ["holds"]
    assert verdicts(claim, final=sized(final(values | {"wa": [40, 41, 42]})))[0] == ["fails"]  # a real loss counts
    assert verdicts(claim, final=sized(final(values), test_images=10_000))[0] == ["uninformative"]
    assert verdicts(claim, final=sized(final(values | {"sgp": [12.5, 12.5, 12.5], "wa": [12.5, 12.5, 12.5]}),
                                        test_images=10_000))[0] == ["holds"]  # 12.5 % is off chance on 10,000


def test_an_early_gain_over_a_baseline_at_chance_is_uninformative():
    claim = one_claim("larger_early_gain")
    runs = curves({"dimat": [[30, 35, 36]] * 3, "wa": [[30, 10, 11]] * 3, "sgp": [[30, 10.5, 10]] * 3})
    at_chance = sized(final({"dimat": [35] * 3, "wa": [10] * 3, "sgp": [10] * 3}))
    assert verdicts(claim, curves=runs, final=at_chance)[0] == ["uninformative"]
    assert verdicts(claim, curves=runs)[0] == ["holds"]  # no test set size: no chance test, as before


def test_the_main_table_marks_an_entry_at_chance_and_says_what_the_mark_means():
    from dimat_bench.aggregate import CHANCE_NOTE, main_table, to_markdown

    frame = sized(final({"dimat": [25, 26, 27], "sgp": [10, 10, 10.5]})).assign(status="complete")
    text = to_markdown(main_table(frame))
    assert "| sgp | 10.17 ± 0.29 † |" in text and "| dimat | **26.00 ± 1.00** |" in text and CHANCE_NOTE in text
    assert "†" not in to_markdown(main_table(final({"dimat": [25, 26, 27], "sgp": [10, 10, 10.5]})))


def test_the_shipped_claims_are_the_papers_seven_and_zhu_et_al_s_with_known_checks_and_sources():
    data = load_claims()
    ids = [f"C{i}" for i in range(1, 8)] + ["Z1", "Z2", "Z3"]
    assert [c["id"] for c in data["claims"]] == ids
    table = claims_table({"final": final({"dimat": [50, 51]}), "curves": curves({"dimat": [[30, 31]]}),
                          "communication": communication({"dimat": {(5, "ring"): 5.0}})}, data)
    assert set(table["claim"]) == set(ids) and set(table["verdict"]) <= set(VERDICTS)
    sources = table.drop_duplicates("claim").set_index("claim")["source"]
    assert set(sources[[f"C{i}" for i in range(1, 8)]]) == {"Saadati et al., CVPR 2024 (arXiv 2404.08079)"}
    assert sources["Z1"] == sources["Z2"] == "Zhu et al., ICLR 2026 (arXiv 2507.06542)"
    assert sources["Z3"].startswith("Zhu et al., ICLR 2026 (arXiv 2507.06542), carried over")
    budgets = {c["id"]: c for c in data["claims"]}
    assert [(budgets[z]["method"], budgets[z]["baselines"], budgets[z]["measure"]) for z in ("Z2", "Z3")] == [
        ("wa_late", ["wa_uniform"], "final_merge_average"), ("dimat_late", ["dimat_uniform"], "final_merge_aligned")]


def merged_final(agents: dict, merged: dict, setting=SETTING | {"split": "noniid"}) -> pd.DataFrame:
    """method -> per-seed agents' accuracy after training and the final average merge's, in %."""
    frame = final(agents, setting)
    frame["after_train_acc"] = frame["paper_acc"]
    frame["paper_acc"] = 0.99  # right after the last merge: not what the final merge took
    frame["final_merge_average_acc"] = [v / 100 for m in agents for v in merged[m]]
    return frame


def test_the_final_merge_claim_pairs_the_merge_with_the_agents_it_merged_per_method():
    data = one_claim("merge_beats_agents", variant="average", where={"split": "noniid"})
    frame = merged_final({"local": [20, 21, 22], "wa": [30, 31, 32], "sgp": [25, 26, 27]},
                         {"local": [24, 26, 25], "wa": [29, 30, 31], "sgp": [27, 24, 26]})
    result, table = verdicts(data, final=frame)
    # local: +4, +5, +3 (holds); wa: −1 in every seed (fails); sgp: +2, −2, −1 (inconclusive)
    assert result == ["holds", "inconclusive", "fails"]
    assert table["setting"].tolist() == [f"CIFAR-10 resnet20×1 N=5 noniid ring, {m}" for m in ("local", "sgp", "wa")]
    assert "+4.00 [+1.52, +6.48] vs the agents" in table["reason"][0]
    assert table["ours"][2] == "merge 30.00 ± 1.00; agents 31.00 ± 1.00"
    # IID settings are not the claim's; cells without the merge are not run
    assert verdicts(data, final=merged_final({"wa": [1, 2, 3]}, {"wa": [5, 6, 7]}, SETTING))[0] == ["not run"]
    frame["final_merge_average_acc"] = float("nan")
    result, table = verdicts(data, final=frame)
    assert result == ["not run"] * 3 and "final_merge: false" in table["reason"][0]
    result, _ = verdicts(data, final=frame.drop(columns=["final_merge_average_acc"]))
    assert result == ["not run"] * 3


def test_a_claim_with_a_measure_reads_that_column_not_the_papers_point():
    """Z2's shape: late against uniform on the final global merge, where the paper's point says the
    opposite; an unknown measure is a bad claims file, named."""
    data = one_claim("higher_final", method="wa_late", baselines=["wa_uniform"], measure="final_merge_average")
    frame = final({"wa_late": [20, 21, 22], "wa_uniform": [30, 31, 32]})
    frame["final_merge_average_acc"] = [v / 100 for v in (40, 42, 41, 35, 36, 37)]  # late +5, +6, +4
    result, table = verdicts(data, final=frame)
    assert result == ["holds"] and table["ours"][0] == "wa_late 41.00 ± 1.00; wa_uniform 36.00 ± 1.00"
    assert table["reason"][0].startswith("the final global merge's accuracy (plain average), wa_late minus")
    assert verdicts(one_claim("higher_final", method="wa_late", baselines=["wa_uniform"]), final=frame)[0] == ["fails"]
    frame["final_merge_average_acc"] = float("nan")  # complete cells run with final_merge: false
    result, table = verdicts(data, final=frame.assign(status="complete"))
    assert result == ["not run"] and "final_merge: false" in table["reason"][0]
    with pytest.raises(ValueError, match="claim X: measure 'final'; allowed: paper, after_train"):
        verdicts(one_claim("higher_final", measure="final"), final=frame)


# --- the paired interval -----------------------------------------------------------------------------

def test_the_paired_interval_is_students_t_on_the_per_seed_differences():
    """Differences 1.0, 0.1, 1.4: mean 5/6, sd √(0.4433…) (n − 1 = 2), half-width t · sd / √3."""
    mean, low, high = paired_interval(pd.Series([1.0, 0.1, 1.4]))
    sd = math.sqrt(((1 - 5 / 6) ** 2 + (0.1 - 5 / 6) ** 2 + (1.4 - 5 / 6) ** 2) / 2)
    assert LEVEL == 0.95 and MIN_SEEDS == 3
    assert mean == pytest.approx(5 / 6, rel=1e-12)
    assert (low, high) == pytest.approx((5 / 6 - T_975_2 * sd / math.sqrt(3), 5 / 6 + T_975_2 * sd / math.sqrt(3)),
                                        rel=1e-12)
    assert (round(low, 2), round(high, 2)) == (-0.82, 2.49)
    mean, low, high = paired_interval(pd.Series([2.0, 2.0, 2.0, 2.0]))
    assert (mean, low, high) == (2.0, 2.0, 2.0)  # no spread in the differences: the interval is the point


def test_a_difference_the_old_spread_rule_called_holds_is_inconclusive_when_paired():
    """dimat 10, 10.5, 11 against wa 9, 10.4, 9.6: the means differ by 0.83 points, more than either
    method's std over seeds (0.50, 0.70): the old rule said holds. Seed by seed the differences are
    1.0, 0.1, 1.4, and their 95 % interval [−0.82, +2.49] contains zero: inconclusive."""
    data = one_claim("higher_final", baselines=["wa"])
    result, table = verdicts(data, final=final({"dimat": [10, 10.5, 11], "wa": [9, 10.4, 9.6]}))
    assert result == ["inconclusive"] and "+0.83 [-0.82, +2.49] vs wa" in table["reason"][0]
    assert "paired by seed, with its 95% t-interval" in table["reason"][0]


def test_a_small_difference_every_seed_agrees_on_holds_though_the_seeds_spread_widely():
    """dimat 40, 50, 60 against wa 39, 49.2, 58.8: the seeds spread by 10 points (the old rule: inconclusive),
    but dimat is ahead by 1.0, 0.8, 1.2 in each: interval [+0.50, +1.50], above zero: holds. Reversed: fails."""
    data = one_claim("higher_final", baselines=["wa"])
    result, table = verdicts(data, final=final({"dimat": [40, 50, 60], "wa": [39, 49.2, 58.8]}))
    assert result == ["holds"] and "+1.00 [+0.50, +1.50] vs wa" in table["reason"][0]
    result, table = verdicts(data, final=final({"dimat": [39, 49.2, 58.8], "wa": [40, 50, 60]}))
    assert result == ["fails"] and "-1.00 [-1.50, -0.50] vs wa" in table["reason"][0]


def test_seeds_pair_by_their_number_not_by_their_order_and_fewer_than_three_pairs_are_inconclusive():
    data = one_claim("higher_final", baselines=["wa"])
    # wa's rows come in reverse seed order: paired by seed the differences are 1.0, 0.8, 1.2 (holds); paired
    # by position they would be −19.2, 0.8, 21.2 (inconclusive)
    frame = final({"dimat": [40, 50, 60], "wa": [58.8, 49.2, 39]}, seeds={"wa": [2, 1, 0]})
    assert verdicts(data, final=frame)[0] == ["holds"]
    # seeds 0-2 against seeds 1-3: two pairs (51 − 10, 52 − 11) only, however clear the difference
    result, table = verdicts(data, final=final({"dimat": [50, 51, 52], "wa": [10, 11, 12]}, seeds={"wa": [1, 2, 3]}))
    assert result == ["inconclusive"]
    assert "+41.00 vs wa (2 paired seeds)" in table["reason"][0]
    assert "fewer than 3 paired seeds: too few to judge a difference" in table["reason"][0]
    # two seeds each, 40 points apart in both: inconclusive, said in the reason
    result, table = verdicts(data, final=final({"dimat": [50, 51], "wa": [10, 11]}))
    assert result == ["inconclusive"] and "fewer than 3 paired seeds" in table["reason"][0]
