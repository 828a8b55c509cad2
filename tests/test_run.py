"""The `run` command: its config (run keys plus the chosen method's options), bad input, `--help`,
SIGTERM."""

import dataclasses
import signal

import pytest

from dimat_bench.cli import build_parser, main
from dimat_bench.methods import METHODS
from dimat_bench.methods.merge import MergeOptions
from dimat_bench.registry import ConfigError
from dimat_bench.run import RUN_KEYS, CellConfig, base_methods


def cell(**data):
    return CellConfig.from_mapping({"pretrained": "p", **data})


@pytest.mark.parametrize("data,message", [
    ({"method": "fedavg"}, "method: got 'fedavg'; allowed: " + ", ".join(METHODS.names())),
    ({"topology": "star"}, "topology: got 'star'"),
    ({"rounds": -1}, "rounds: got -1; allowed: a number >= 1"),
    ({"preset": "paper"}, "preset: got 'paper'; allowed: official"),
    ({"method": "wa", "match_samples": 0}, "match_samples: got 0; allowed: a number >= 1"),
    ({"method": "sgp", "match_samples": 50},
     "match_samples: got 50; allowed: a key of dimat, dimat_early, dimat_late, dimat_local, dimat_local_stale, dimat_stale, dimat_uniform, wa, wa_early, wa_late, wa_uniform, wm, wm_reset only. "
     "method sgp does not take it"),
    ({"method": "dimat", "gossip_momentum": 0.5}, "gossip_momentum: got 0.5; allowed: a key of cdmsgd only"),
    ({"match_sample": 50}, "match_sample: got 50; allowed: known keys only: .*did you mean 'match_samples'"),
    ({"method": "dimat_local", "match_data": "global"},
     "match_data: got 'global'; allowed: 'local'. dimat_local is dimat with match_data fixed; use method dimat"),
    ({"pretrained": None}, "pretrained: got None"),
])
def test_bad_run_configs_fail_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        cell(**data)


def test_options_are_built_by_name_with_the_methods_own_defaults_and_round_trip():
    dimat, sgp = cell(method="dimat", lr=0.01, match_samples=7), cell(method="sgp")
    assert (dimat.options.optimizer, dimat.options.lr, dimat.options.match_samples, dimat.options.bn_reset) == \
        ("adam", 0.01, 7, True)
    assert (sgp.options.lr, sgp.options.lr_decay) == (0.01, 0.981)
    # a gossip step is the method's own update rule: no local optimizer's keys to take or record
    assert not any(hasattr(sgp.options, key) for key in ("match_samples", "optimizer", "momentum", "weight_decay",
                                                         "reset_optimizer"))
    for config in (dimat, sgp, cell(method="dimat_local"), cell(method="cdmsgd", gossip_momentum=0.5)):
        assert CellConfig.from_mapping(config.to_dict()) == config
        assert list(config.to_dict()) == RUN_KEYS + [f.name for f in dataclasses.fields(config.options)]


def test_a_variant_is_its_method_with_options_fixed():
    ours = dict(match_data="local", match_augment=False, bn_momentum_cumulative=False, fc_merge_once=False)
    assert cell(method="dimat_local").options == cell(method="dimat", **ours).options
    assert cell(method="dimat_local", match_data="local", lr=0.1).options.lr == 0.1  # the fixed value agrees
    wm = cell(method="wm_reset")
    assert type(wm.options) is type(cell(method="wm").options) and wm.options.bn_reset
    assert METHODS.get("wm_reset").variant_of == "wm" and issubclass(METHODS.get("wm_reset"), METHODS.get("wm"))


def run_parser():
    return build_parser()._subparsers._group_actions[0].choices["run"]


def test_run_help_groups_the_options_by_the_methods_that_take_them():
    """Built from the registry: a plug-in method joins the groups of the options it takes (no
    method list is written out here, so registering one breaks nothing)."""
    groups = {group.title: [a.dest for a in group._group_actions] for group in run_parser()._action_groups}
    titles = list(groups)[2:]
    every = sorted(m.name for m in base_methods())
    merge = sorted(m.name for m in base_methods() if issubclass(m.Options, MergeOptions))
    trained = sorted(m.name for m in base_methods() if m.family != "gossip")
    assert {"dimat", "wa", "wm", "sgp", "cdsgd", "cdmsgd", "local"} <= set(every) and merge[:3] == ["dimat", "wa", "wm"]
    assert titles[:4] == ["the cell (the same keys work in --config files)",
                          f"every method: the learning rate and its decay ({', '.join(every)})",
                          f"methods that train with a local optimizer (merge methods, local) ({', '.join(trained)})",
                          f"merge methods: matching data, BatchNorm reset, the authors' switches ({', '.join(merge)})"]
    assert "cdmsgd: the consensus step's momentum" in titles and "wm: weight matching" in titles
    assert groups[titles[0]] == RUN_KEYS
    assert groups[titles[1]] == ["lr", "lr_decay"]
    assert groups[titles[2]] == ["optimizer", "momentum", "weight_decay", "reset_optimizer"]
    assert groups["cdmsgd: the consensus step's momentum"] == ["gossip_momentum"]
    assert groups["wm: weight matching"] == ["wm_max_sweeps"]
    assert sorted(key for title in titles for key in groups[title]) == sorted(CellConfig.keys())
    text = " ".join(run_parser().format_help().split())
    by_lr = {}
    for method in base_methods():
        by_lr.setdefault(str(method.build_options().lr), []).append(method.name)
    assert {"cdmsgd", "cdsgd", "sgp"} <= set(by_lr["0.01"]) and {"dimat", "local", "wa", "wm"} <= set(by_lr["0.001"])
    assert "[default: " + "; ".join(f"{lr} ({', '.join(names)})" for lr, names in by_lr.items()) + "]" in text
    assert "[default: True (dimat); False (wa, wm)]" in text  # the authors' WM resets nothing
    assert "dimat_local = dimat with match_data='local'" in text


def test_run_fails_before_compute_on_a_missing_or_corrupt_pretrained_dir(tmp_path, capsys, pretrained5):
    assert main(["run", "--pretrained", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "pretrained: got" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "agents.pt").write_bytes((pretrained5 / "agents.pt").read_bytes()[:1000])
    assert main(["run", "--pretrained", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["run", "--pretrained", str(pretrained5), "--method", "sgp", "--match-samples", "5",
                 "--out", str(tmp_path / "o")]) == 2
    assert "method sgp does not take it" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sigterm_while_a_command_computes_ends_it_in_one_line_with_exit_143_and_restores_the_handler(
        tmp_path, capsys, monkeypatch):
    """main turns SIGTERM (a scheduler's time limit, scancel) into one line and exit 128 + SIGTERM, not
    a failure record even with --record-failure, and gives the caller its own handler back. (The
    job itself is a stand-in here; test_hostile sends a real SIGTERM to a real job.)"""
    def callers(signum, frame):
        raise AssertionError("SIGTERM reached the caller's handler: the command installed none")

    def computing(config, out, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # what the scheduler sends while the cell computes
        raise AssertionError("the command went on after SIGTERM")

    monkeypatch.setattr("dimat_bench.run.run_cell", computing)
    previous = signal.signal(signal.SIGTERM, callers)
    out = tmp_path / "cell"
    try:
        status = main(["run", "--pretrained", str(tmp_path / "pre"), "--out", str(out), "--quiet", "--record-failure"])
        handler = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 128 + signal.SIGTERM
    assert capsys.readouterr().err.splitlines() == [
        f"error: {out}: stopped by SIGTERM before it finished; nothing was written there, and the same command "
        "computes it again"]
    assert handler is callers
