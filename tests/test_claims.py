"""Verdicts on the paper's claims, every branch on small synthetic result sets."""

import pandas as pd
import pytest

from dimat_bench.claims import VERDICTS, claims_table, early_gain, load_claims

SETTING = {"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 5, "split": "iid", "topology": "ring"}
R1 = {"dataset": "cifar100", "model": "resnet20", "width": 8, "agents": 5, "split": "iid", "topology": "ring"}


def final(values: dict, setting=SETTING, rounds=3) -> pd.DataFrame:
    """A final-accuracy table: method -> per-seed accuracies in %."""
    rows = [setting | {"method": m, "seed": s, "rounds": rounds, "initial_acc": 0.3, "paper_acc": v / 100}
            for m, accs in values.items() for s, v in enumerate(accs)]
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
    claim = {"id": "X", "statement": "s", "check": check, "method": "dimat", "baselines": ["wa", "sgp"]} | fields
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
    values["dimat"] = [[30, 35, 37] + rise, [30, 36, 37] + rise]  # spread 0.35 < 3 points ahead of sgp
    assert verdicts(one_claim("larger_early_gain"), curves=curves(values))[0] == ["holds"]
    values["wa"] = [[30, 40, 40] + rise] * 2
    assert verdicts(one_claim("larger_early_gain"), curves=curves(values))[0] == ["fails"]


@pytest.mark.parametrize("accs,rounds,verdict", [
    ([67.0, 67.5, 66.5], 100, "holds"), ([60.0, 60.5, 61.0], 100, "fails"), ([67.0, 67.5], 3, "not run")])
def test_the_reference_value(accs, rounds, verdict):
    data = one_claim("matches_reference", reference="R1", rounds=100, tolerance=1.5)
    result, table = verdicts(data, final=final({"dimat": accs}, R1, rounds))
    assert result == [verdict] and table["reference"][0] == "67.12 ± 0.22 (R1)"
    assert verdicts(data, final=final({"dimat": accs}))[0] == ["not run"]  # the grid lacks R1's setting


def test_fewer_messages():
    merge = {(5, "ring"): 5.0, (5, "fc"): 10.0}
    gossip = {(5, "ring"): 1000.0, (5, "fc"): 2000.0}
    result, table = verdicts(one_claim("fewer_messages", baselines=["sgp", "cdsgd"]), communication=communication(
        {"dimat": merge, "wa": merge, "sgp": gossip}))
    assert result == ["holds"] and "200× to 200×" in table["ours"][0]
    worse = {(5, "ring"): 5.0, (5, "fc"): 2000.0}
    assert verdicts(one_claim("fewer_messages", baselines=["sgp", "cdsgd"]), communication=communication(
        {"dimat": merge, "wa": merge, "sgp": worse}))[0] == ["fails"]


def test_the_shipped_claims_are_the_seven_of_claims_md_with_known_checks():
    data = load_claims()
    assert [c["id"] for c in data["claims"]] == [f"C{i}" for i in range(1, 8)]
    table = claims_table({"final": final({"dimat": [50, 51]}), "curves": curves({"dimat": [[30, 31]]}),
                          "communication": communication({"dimat": {(5, "ring"): 5.0}})}, data)
    assert set(table["claim"]) == {f"C{i}" for i in range(1, 8)} and set(table["verdict"]) <= set(VERDICTS)
