import numpy as np
import pytest

from dimat_bench.registry import ConfigError
from dimat_bench.splits import SPLITS, create_split

OPTIONS = {"dirichlet": {"alpha": 0.3, "min_shard_size": 20}}


@pytest.mark.parametrize("name", SPLITS.names())
@pytest.mark.parametrize("n_agents", [2, 5])
def test_every_split_gives_disjoint_shards_and_true_counts(name, n_agents, cifar10):
    labels = cifar10.y_train
    split = create_split(name, labels, 10, n_agents, seed=3, **OPTIONS.get(name, {}))
    assert len(split.shards) == n_agents
    everything = np.concatenate(split.shards)
    assert len(np.unique(everything)) == len(everything), "an image is in two shards"
    assert everything.min() >= 0 and everything.max() < len(labels)
    for shard, counts in zip(split.shards, split.class_counts):
        np.testing.assert_array_equal(counts, np.bincount(labels[shard], minlength=10))
    again = create_split(name, labels, 10, n_agents, seed=3, **OPTIONS.get(name, {}))
    for a, b in zip(split.shards, again.shards):
        np.testing.assert_array_equal(a, b)


def test_iid_gives_every_agent_an_equal_share_of_every_class(cifar10):
    split = create_split("iid", cifar10.y_train, 10, 3, seed=0)  # 50 per class: 16 each, 2 dropped
    assert (split.class_counts == 16).all()


def test_noniid_deals_whole_classes_round_robin(cifar10):
    split = create_split("noniid", cifar10.y_train, 10, 5, seed=0)
    for k in range(5):
        assert list(split.own_classes(k)) == [k, k + 5]
        assert list(split.class_counts[k][[k, k + 5]]) == [50, 50]
    owners = (split.class_counts > 0).sum(axis=0)
    assert (owners == 1).all(), "noniid shards must be class-disjoint"


def test_noniid_cifar100_five_agents_gets_every_fifth_class(cifar100):
    split = create_split("noniid", cifar100.y_train, 100, 5, seed=0)
    for k in range(5):
        assert list(split.own_classes(k)) == list(range(k, 100, 5))


def test_noniid_trims_every_class_to_the_smallest():
    labels = np.repeat(np.arange(4), [7, 5, 9, 5])
    split = create_split("noniid", labels, 4, 2, seed=0)
    assert split.class_counts.tolist() == [[5, 0, 5, 0], [0, 5, 0, 5]]


def test_noniid_with_more_agents_than_classes_cuts_classes_into_chunks(cifar10):
    split = create_split("noniid", cifar10.y_train, 10, 20, seed=0)
    for i in range(20):
        assert list(split.own_classes(i)) == [i % 10]
        assert split.class_counts[i, i % 10] == 25
    everything = np.concatenate(split.shards)
    assert len(np.unique(everything)) == 500


def test_noniid_rejects_agent_counts_that_do_not_divide_into_classes(cifar10):
    with pytest.raises(ConfigError, match=r"agents: got 15; allowed: at most 10 or a multiple of 10"):
        create_split("noniid", cifar10.y_train, 10, 15, seed=0)


def test_dirichlet_respects_minimum_size_and_skews_labels(cifar10):
    split = create_split("dirichlet", cifar10.y_train, 10, 5, seed=1, alpha=0.1, min_shard_size=60)
    sizes = [len(s) for s in split.shards]
    assert min(sizes) >= 60
    # With alpha = 0.1 most of each agent's data sits in few classes.
    top_two = np.sort(split.class_counts, axis=1)[:, -2:].sum(axis=1) / np.array(sizes)
    assert top_two.mean() > 0.5


def test_dirichlet_impossible_minimum_fails_clearly(cifar10):
    with pytest.raises(ConfigError, match="min_shard_size: got 101; allowed: at most 100"):
        create_split("dirichlet", cifar10.y_train, 10, 5, seed=0, alpha=0.5, min_shard_size=101)


def test_fewer_than_two_agents_is_rejected(cifar10):
    with pytest.raises(ConfigError, match="agents: got 1"):
        create_split("iid", cifar10.y_train, 10, 1)


def test_unknown_split_names_the_allowed_ones(cifar10):
    with pytest.raises(ConfigError, match="split: got 'non-iid'; allowed: dirichlet, iid, noniid. did you mean 'noniid'"):
        create_split("non-iid", cifar10.y_train, 10, 5)
