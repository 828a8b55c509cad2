"""One final global merge of a cell's agents (docs/benchmark.md#one-cell, step 5).

After the last round, every cell merges its N final agents once, as if the graph were fully
connected for one exchange, and evaluates the one model that results, in two variants:

- `average`: the plain average of every parameter and BatchNorm buffer (WA's rule, equal weights,
  no BatchNorm reset);
- `aligned`: DIMAT's merge with agent 0 as the anchor: the BatchNorm statistics of every agent's
  model recomputed on the matching images, every other agent aligned to agent 0 by activation
  matching on them, the equal-weight average, and its BatchNorm statistics recomputed on them.

The matching images are `final_merge_samples` training images drawn without augmentation from the
union of the agents' shards (the images they trained on; a non-IID split leaves some of the training
subset to no agent, and those are never drawn) with the cell's seed. The merge
works on copies: the agents, their checkpoint and the method's message counts stay as the last round
left them. It costs one merge per cell (`images`), not one per round.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch

from .devices import inference_batch_size, matching_memory
from .matching import edge_permutations, reset_batchnorm, weighted_sum
from .permutation import FeatureExtractor, permutation_spec
from .population import Population, derive_seed

VARIANTS = ("average", "aligned")
PHASES = {variant: f"final_merge_{variant}" for variant in VARIANTS}  # their metrics.csv phase


def images(agents: int, train_images: int, test_images: int, samples: int | None) -> dict[str, int]:
    """Images each phase of the final merge runs: the aligned variant's BatchNorm resets (every
    agent's before matching, the merge's after), its matching passes and the N − 1 edges'
    correlation statistics, and one test-set evaluation per variant."""
    matched = min(train_images, samples or train_images)
    return {"bn_reset": (agents + 1) * matched, "matching": agents * matched, "correlation": (agents - 1) * matched,
            "evaluate": len(VARIANTS) * test_images}


def matching_batches(population: Population, samples: int | None, seed: int) -> Iterator[torch.Tensor]:
    """`samples` training images (all when None) from the union of the shards, one seeded draw,
    unaugmented, in inference-sized batches; the same images every time it is called."""
    generator = torch.Generator(population.device).manual_seed(derive_seed(seed, "final_merge"))
    pool = torch.cat(list(population.shards))
    order = pool[torch.randperm(len(pool), generator=generator, device=population.device)]
    order = order[:samples] if samples is not None else order
    size = inference_batch_size(population.device)
    for lo in range(0, len(order), size):
        yield population.train.batch(order[lo:lo + size])[0]


def merged_models(population: Population, samples: int | None, seed: int) -> dict[str, torch.nn.Module]:
    """The two final merges of the population's current agents, as models (the agents untouched)."""
    n = population.n_agents
    states = population.state_dicts()
    average = copy.deepcopy(population.models[0])
    average.load_state_dict(weighted_sum(states, [1 / n] * n))
    copies = [copy.deepcopy(model) for model in population.models]
    batches = lambda: matching_batches(population, samples, seed)  # noqa: E731
    reset_batchnorm(copies, batches(), False, population.autocast)
    spec = permutation_spec(copies[0])
    for model in copies:
        model.eval()
    perms = edge_permutations([FeatureExtractor(m, spec) for m in copies], [(0, j) for j in range(1, n)], batches(),
                              spec, population.autocast, matching_memory(population.device))
    fresh = [{k: v.detach().clone() for k, v in model.state_dict().items()} for model in copies]
    aligned_states = [fresh[0]] + [spec.apply(fresh[j], perms[(0, j)]) for j in range(1, n)]
    aligned = copies[0]
    aligned.load_state_dict(weighted_sum(aligned_states, [1 / n] * n))
    reset_batchnorm(aligned, batches(), False, population.autocast)
    return {"average": average, "aligned": aligned}


def evaluate(population: Population, samples: int | None, seed: int) -> dict[str, list[dict]]:
    """Per variant, `Population.evaluate`'s rows for the merged model held by every agent."""
    return {variant: population.evaluate(models=[model])
            for variant, model in merged_models(population, samples, seed).items()}
