import pytest
import torch

from dimat_bench import config as cfg
from dimat_bench.cli import build_parser, main
from dimat_bench.pretrain import PretrainConfig
from dimat_bench.registry import ConfigError
from dimat_bench.run import CellConfig


@pytest.mark.parametrize("data,message", [
    ({"epoch": 3}, r"epoch: got 3; allowed: known keys only: .*did you mean 'epochs'"),
    ({"agents": "five"}, "agents: got 'five'; allowed: a value of type int"),
    ({"agents": 5.0}, "agents: got 5.0; allowed: a value of type int"),
    ({"augment": 1}, "augment: got 1; allowed: a value of type bool"),
    ({"agents": 1}, r"agents: got 1; allowed: a number in \[2, 1024\]"),
    ({"lr": -0.1}, "lr: got -0.1; allowed: a number >= 0.0"),
    ({"dataset": "cifar11"}, "dataset: got 'cifar11'; allowed: cifar10, cifar100, tinyimagenet. did you mean 'cifar10'"),
    ({"split": "non-iid"}, "split: got 'non-iid'; allowed: dirichlet, iid, noniid. did you mean 'noniid'"),
    ({"optimizer": "adamw"}, "optimizer: got 'adamw'; allowed: adam, sgd"),
    ({"model": "vgg16"}, "model: got 'vgg16'; allowed: resnet20, resnet50, vgg16_bn"),
    ({"device": "cuda:99"}, "device: got 'cuda:99'"),
    ({"train_size": 9, "agents": 5}, "train_size: got 9; allowed: >= 10"),
    ({"train_size": None, "test_size": "all"}, "test_size: got 'all'"),
])
def test_bad_config_values_name_the_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        cfg.from_dict(PretrainConfig, data)


def test_good_config_resolves_and_accepts_yaml_style_floats():
    config = cfg.from_dict(PretrainConfig, {"lr": "1e-3", "agents": 10, "train_size": None})
    assert config.lr == 0.001 and config.agents == 10 and config.train_size is None
    assert cfg.to_dict(config)["agents"] == 10


@pytest.mark.parametrize("command,config_class", [("pretrain", PretrainConfig), ("run", CellConfig)])
def test_every_config_key_has_a_flag(command, config_class):
    text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
    for key in cfg.keys(config_class):
        assert cfg.flag(key) in text


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("agents: 4\nsplit: noniid\nlr: 1e-2\nlegacy_normalization: true\n")
    parser = build_parser()
    args = parser.parse_args(["pretrain", "--config", str(path), "--agents", "2", "--out", "x", "--train-size", "none"])
    config = cfg.resolve(PretrainConfig, args)
    assert (config.agents, config.split, config.lr, config.legacy_normalization) == (2, "noniid", 0.01, True)
    assert config.train_size is None


def test_bad_input_fails_before_any_compute_and_leaves_no_output(tmp_path, capsys, data_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("dimat_bench.population.Population.train_epoch", no_training)
    out = tmp_path / "out"
    cases = [
        (["--agents", "1"], "agents: got 1"),
        (["--dataset", "mnist"], "dataset: got 'mnist'"),
        (["--data-dir", str(tmp_path / "nowhere"), "--no-download"], "data_dir: no cifar10 cache"),
        (["--train-size", "5000"], "train_size: got 5000; allowed: at most 500"),
        (["--split", "noniid", "--agents", "15"], "agents: got 15"),
    ]
    for flags, message in cases:
        code = main(["pretrain", "--data-dir", str(data_dir), "--out", str(out), "--quiet", *flags])
        assert code == 2
        assert message in capsys.readouterr().err
        assert list(tmp_path.iterdir()) == []


def test_unknown_key_in_a_config_file_fails(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("agent: 4\n")
    assert main(["pretrain", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "agent: got 4; allowed: known keys only" in capsys.readouterr().err


def test_cuda_device_is_checked_against_the_machine():
    if torch.cuda.is_available():
        cfg.from_dict(PretrainConfig, {"device": "cuda"})
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            cfg.from_dict(PretrainConfig, {"device": "cuda"})
