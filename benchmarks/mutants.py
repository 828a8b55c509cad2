"""Do the tests catch realistic bugs? Each mutant below is one plausible one-line mistake in the
maths (a transposed mixing weight, every neighbour given the first neighbour's permutation, a
BatchNorm reset that keeps the old statistics, ...). For each, this script copies the working tree
(tracked and untracked, not ignored, files) into a temporary directory, applies that one edit there
(the old text must occur exactly once, else the table is stale and the script stops), runs the
mutant's own small test selection on the copy, and reports the first test that failed ("killed") or
SURVIVED. A baseline run of every selected test on the unmutated copy comes first: the tests must
pass before their failures mean anything.

    python benchmarks/mutants.py                  # every mutant (a few minutes on 2 cores)
    python benchmarks/mutants.py --list           # the table
    python benchmarks/mutants.py --only dimat     # the mutants whose description contains "dimat"

Exit status: 0 when every mutant is killed, 1 when one survived, 2 when the table is stale (an old
text not found once, a test id that no longer exists) or the baseline fails.

To add a mutant, append a `Mutant(description, file, old text, new text, tests)` to MUTANTS: the
old text a line (or part of one) of `file` that occurs once, the tests the pytest ids that should
catch it (keep them few and fast).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Mutant(NamedTuple):
    description: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in `path`
    new: str
    tests: tuple[str, ...]  # pytest ids, run in this order with -x


MERGE, POPULATION, GOSSIP = "tests/test_merge.py::", "tests/test_population.py::", "tests/test_gossip.py::"
AGGREGATE = "tests/test_aggregate.py::"
WA = MERGE + "test_weight_averaging_gives_agent_i_row_i_of_the_mixing_matrix_over_stale_batchnorm_too"
DIMAT_COPIES = MERGE + "test_dimat_gives_every_agent_back_its_own_model_when_all_are_permuted_copies"
DIMAT_SUM = MERGE + "test_dimat_merge_is_the_weighted_sum_of_each_neighbour_aligned_by_its_own_matching"
BN_RESET = MERGE + "test_dimat_resets_batchnorm_from_scratch_on_each_agents_own_matching_images"
FRESH_FEATURES = MERGE + "test_dimat_matches_features_normalised_by_statistics_recomputed_on_the_matching_images"
MATCHING = MERGE + "test_matching_batches_draw_the_asked_number_from_the_right_pool_afresh_each_round"
CONSENSUS = POPULATION + "test_consensus_distance_is_the_mean_squared_distance_of_the_parameters_to_their_mean"
SGP_PUSH = GOSSIP + "test_sgp_on_a_row_stochastic_matrix_pushes_equal_shares_and_runs_push_sum"
SGP_DIRECTED = GOSSIP + "test_sgp_push_sum_on_a_directed_graph_conserves_mass_and_finds_the_average"
FINAL = AGGREGATE + "test_final_accuracy_is_the_last_rounds_agent_mean_at_each_points_phase"
TABLE = AGGREGATE + "test_the_main_table_is_mean_and_std_over_seeds_with_the_best_method_per_column_in_bold"
STREAMED = "tests/test_matching.py::test_streamed_correlations_of_every_edge_equal_pearson_on_all_samples_at_once"
SCHEDULE = "tests/test_methods.py::test_every_method_communicates_on_its_schedule_and_it_changes_the_agents"
PAVG = "tests/test_docs.py::test_the_second_example_passes_the_shared_tests"
PERIOD = "tests/test_docs.py::test_a_period_that_does_not_divide_a_round_is_counted_and_tabled_as_it_runs"
GRAPH = "tests/test_methods.py::test_each_exchange_sends_what_the_graph_says"
CURVES = "tests/test_figures.py::test_accuracy_curves_are_the_means_over_agents_and_seeds_at_each_point"
COMM_FIGURE = "tests/test_figures.py::test_the_communication_figure_draws_the_tables_values"
SHARED_PASS = "tests/test_speed_paths.py::test_the_shared_pass_merges_as_the_per_agent_path_with_one_pass_per_model"
CHUNKS = "tests/test_speed_paths.py::test_a_matching_memory_cap_streams_each_batch_in_chunks_and_finds_the_same_permutations"
DECLARED = "tests/test_estimate.py::test_a_methods_declared_images_are_what_its_merge_runs"

# Faults of the machine (a full disk, SIGTERM) and the planning layer (issue 14's preflight, the user's figures).
RESULTS = "tests/test_results.py::"
TORCH_SAVE = RESULTS + "test_a_failed_torch_save_is_an_oserror_naming_the_checkpoint"
UNNAMED_WRITE = RESULTS + "test_a_failed_write_that_names_no_file_is_named_by_the_file_being_written"
SIGNAL_STOP = RESULTS + "test_a_run_stopped_by_a_signal_leaves_nothing"
SIGTERM = "tests/test_run.py::test_sigterm_while_a_command_computes_ends_it_in_one_line_with_exit_143_and_restores_the_handler"
GATE = "tests/test_plan.py::test_the_preflight_stops_a_grid_just_over_the_cpu_limit_unless_confirmed_or_a_gpu_is_there"
PUBLISH = ("tests/test_figures.py::"
           "test_publishing_replaces_the_pipelines_own_figures_and_never_touches_a_file_it_did_not_write")
SHARED_BLOCK = "tests/test_grid.py::test_a_shared_block_that_sets_what_identifies_a_job_fails_the_plan"
FLAGS = "tests/test_grid.py::test_engine_flags_quote_what_the_shell_would_split"
WIDTHS = "tests/test_aggregate.py::test_two_widths_of_any_model_are_two_columns_of_the_main_table"
HOSTILE = "tests/test_hostile.py::"
WF_READ_ONLY = HOSTILE + "test_a_workflow_job_whose_folder_is_read_only_ends_in_one_line"
WF_FULL_DISK = HOSTILE + "test_a_full_disk_ends_the_aggregation_in_one_line_and_a_rerun_completes"
WF_SIGTERM = HOSTILE + "test_sigterm_ends_a_workflow_job_in_one_line"
CLAIMS = "tests/test_claims.py::"
INTERVAL = CLAIMS + "test_the_paired_interval_is_students_t_on_the_per_seed_differences"
OLD_RULE = CLAIMS + "test_a_difference_the_old_spread_rule_called_holds_is_inconclusive_when_paired"
PAIRING = CLAIMS + "test_seeds_pair_by_their_number_not_by_their_order_and_fewer_than_three_pairs_are_inconclusive"
CLAIMS_PY = "dimat_bench/claims.py"
Z1 = CLAIMS + "test_the_final_merge_claim_pairs_the_merge_with_the_agents_it_merged_per_method"
FINAL = "tests/test_final_merge.py::"
FINAL_ALIGNED = FINAL + "test_the_aligned_merge_matches_every_agent_to_agent_zero_on_fresh_statistics"
FINAL_COPIES = FINAL + "test_n_permuted_copies_merge_back_into_the_model_and_n_identical_models_are_left_unchanged"
FINAL_CELL = FINAL + "test_a_cell_records_both_final_merges_and_leaves_its_agents_as_the_last_round_left_them"
FINAL_TABLE = "tests/test_aggregate.py::test_the_final_merges_are_columns_of_final_csv_and_a_table_of_their_own"
HAND_COUNTS = "tests/test_estimate.py::test_images_per_phase_are_the_hand_counts"
FINAL_PY = "dimat_bench/final_merge.py"
CENTRAL = "tests/test_centralized.py::"

MERGE_PY, MATCHING_PY = "dimat_bench/methods/merge.py", "dimat_bench/matching.py"
GOSSIP_PY, AGGREGATE_PY = "dimat_bench/methods/gossip.py", "dimat_bench/aggregate.py"
BASE_PY = "dimat_bench/methods/base.py"
BUDGETS = "tests/test_budgets.py::"
PLACEMENTS = BUDGETS + "test_every_placement_holds_the_budget_in_distinct_rounds_of_the_run"
BUDGET_CHECK = BUDGETS + "test_a_budget_the_run_cannot_hold_fails_in_one_line_before_any_compute"
BUDGET_RUN = BUDGETS + "test_a_late_budget_trains_locally_until_its_rounds_then_merges_and_counts_them"
BUDGET_TABLE = BUDGETS + "test_the_communication_table_gives_every_placement_of_one_budget_the_same_messages_per_run"
BUDGET_ESTIMATE = ("tests/test_estimate.py::"
                   "test_a_budgeted_cell_counts_its_merges_and_measurements_for_the_budgets_rounds_only")
BUDGET_POINT = BUDGETS + "test_the_papers_point_of_a_middle_merge_reads_every_other_round_as_the_agents_entered_it"
MEASURE = "tests/test_claims.py::test_a_claim_with_a_measure_reads_that_column_not_the_papers_point"
NETWORK = "tests/test_network.py::"
NETWORK_PY = "dimat_bench/network.py"
RENORMALISED = NETWORK + "test_a_merge_renormalises_over_what_arrived_and_leaves_untouched_rows_bit_for_bit"
ONE_LEFT = NETWORK + "test_a_merge_with_all_messages_lost_but_one_is_the_two_model_merge_with_renormalised_weights"
FAULT_STREAM = NETWORK + "test_the_faults_come_from_their_own_stream_the_same_for_every_rate"
ABSENT = NETWORK + "test_an_absent_agent_neither_sends_nor_receives_and_push_sum_loses_a_lost_share"
VARYING_MERGE = NETWORK + "test_a_merge_on_a_time_varying_graph_uses_each_rounds_drawn_matrix"
VARYING_GOSSIP = NETWORK + "test_a_gossip_step_on_a_time_varying_graph_mixes_with_that_steps_drawn_matrix"
RESENT = NETWORK + "test_a_resent_share_arrives_with_the_links_next_delivered_message"
RESENT_TOY = NETWORK + "test_push_sum_with_resent_shares_reaches_the_average_under_drops_and_absences"
ONE_PEER = NETWORK + "test_the_one_peer_exponential_graph_has_the_sgp_papers_period_and_union"
DOUBLY = NETWORK + "test_a_method_that_needs_doubly_stochastic_mixing_rejects_a_directed_graph_that_cannot_give_it"
CHECKPOINT_PY, RESULTS_PY, CLI_PY = "dimat_bench/checkpoint.py", "dimat_bench/results.py", "dimat_bench/cli.py"
PREFLIGHT_PY, FIGURES_PY, PLAN_PY = "dimat_bench/preflight.py", "dimat_bench/figures.py", "dimat_bench/plan.py"

MUTANTS: list[Mutant] = [
    Mutant("dimat shared pass: every neighbour gets the first neighbour's permutation", MERGE_PY,
           "[self.spec.apply(states[j], perms[(i, j)]) for j in neighbours]",
           "[self.spec.apply(states[j], perms[(i, neighbours[0])]) for j in neighbours]", (DIMAT_COPIES, DIMAT_SUM)),
    Mutant("dimat shared pass: edge reversed (neighbour j given the permutation aligning i to j)", MERGE_PY,
           "[self.spec.apply(states[j], perms[(i, j)]) for j in neighbours]",
           "[self.spec.apply(states[j], perms[(j, i)]) for j in neighbours]", (DIMAT_COPIES, DIMAT_SUM)),
    Mutant("dimat per agent: every neighbour gets the first neighbour's permutation", MERGE_PY,
           "[self.spec.apply(states[j], p) for j, p in zip(neighbours, perms)]",
           "[self.spec.apply(states[j], perms[0]) for j, p in zip(neighbours, perms)]",
           (DIMAT_COPIES, DIMAT_SUM)),
    Mutant("dimat per agent: permutations applied to the wrong neighbours", MERGE_PY,
           "zip(neighbours, perms)]", "zip(neighbours, perms[::-1])]", (DIMAT_COPIES, DIMAT_SUM)),
    Mutant("dimat shared pass: no BatchNorm reset before matching (matches on stale statistics)", MERGE_PY,
           "if self.options.bn_reset_before_match:  # one reset of every model serves every edge", "if False:",
           (DIMAT_SUM, FRESH_FEATURES)),
    Mutant("dimat per agent: no BatchNorm reset before matching", MERGE_PY,
           "states = self.reset_before_match(states, [agent, *neighbours], agent, round_index)",
           "states = dict(enumerate(states))",
           (DIMAT_SUM, FRESH_FEATURES)),
    Mutant("dimat per agent: only the anchor's statistics reset before matching", MERGE_PY,
           "self.reset_before_match(states, [agent, *neighbours], agent, round_index)",
           "self.reset_before_match(states, [agent], agent, round_index)", (DIMAT_SUM, FRESH_FEATURES)),
    Mutant("dimat per agent: the reset before matching on agent 0's images, not the matching agent's", MERGE_PY,
           "self.reset_before_match(states, [agent, *neighbours], agent, round_index)",
           "self.reset_before_match(states, [agent, *neighbours], 0, round_index)", (DIMAT_SUM, FRESH_FEATURES)),
    Mutant("dimat shared pass: matched on fresh statistics, merged with the stale buffers", MERGE_PY,
           "states = self.reset_before_match(states, models, 0, round_index)",
           "self.reset_before_match(states, models, 0, round_index); states = dict(enumerate(states))", (DIMAT_SUM,)),
    Mutant("merge: mixing weight read as matrix[j, i] (transposed)", MERGE_PY,
           "[matrix[i, j] for j in neighbourhoods[i]]", "[matrix[j, i] for j in neighbourhoods[i]]", (WA, DIMAT_SUM)),
    Mutant("merge: self weight taken from the first neighbour's entry", MERGE_PY,
           "weights = [matrix[i, i]] +", "weights = [matrix[i, neighbourhoods[i][0]]] +", (WA, DIMAT_SUM)),
    Mutant("merge: the last neighbour skipped", MERGE_PY,
           "[int(j) for j in self.topology.neighbours(i)]", "[int(j) for j in self.topology.neighbours(i)][:-1]",
           (WA, DIMAT_SUM)),
    Mutant("weighted_sum drops the last state", MATCHING_PY,
           "for state, weight in zip(states, weights):", "for state, weight in zip(states[:-1], weights):",
           (WA, DIMAT_SUM)),
    Mutant("BatchNorm reset no longer clears the old statistics", MATCHING_PY,
           "m.reset_running_stats()", "pass", (BN_RESET,)),
    Mutant("merge: the BatchNorm reset is skipped", MERGE_PY,
           "if self.options.bn_reset:", "if False:", (BN_RESET,)),
    Mutant("merge: bn_momentum_cumulative inverted", MERGE_PY,
           "self.options.bn_momentum_cumulative,", "not self.options.bn_momentum_cumulative,", (BN_RESET,)),
    Mutant("matching: local matching reads the global pool", MERGE_PY,
           'pool = (population.shards[agent] if options.match_data == "local"',
           'pool = (population.shards[agent] if options.match_data == "shard"', (MATCHING,)),
    Mutant("matching: match_samples off by one", MERGE_PY,
           "order = order[:options.match_samples]", "order = order[:options.match_samples - 1]", (MATCHING,)),
    Mutant("matching: match_samples ignored", MERGE_PY,
           "if options.match_samples is not None:", "if False:", (MATCHING,)),
    Mutant("matching: the round missing from the seed", MERGE_PY,
           'derive_seed(self.seed, "match", round_index, stream)', 'derive_seed(self.seed, "match", stream)',
           (MATCHING,)),
    Mutant("BatchNorm reset of several models runs the batches through the first only", MATCHING_PY,
           "model(images)", "models[0](images)",
           ("tests/test_matching.py::test_resetting_several_models_draws_the_batches_once_and_equals_resetting_each_alone",
            DIMAT_SUM)),
    Mutant("assignment: minimises the total correlation", MATCHING_PY,
           "linear_sum_assignment(score, maximize=True)", "linear_sum_assignment(score, maximize=False)",
           ("tests/test_matching.py::test_assignment_maximises_the_total_score",)),
    Mutant("EdgeStatistics: one feature point's count used for every point", MATCHING_PY,
           "self.moments[i][g].n)", "self.moments[i][0].n)", (STREAMED,)),
    Mutant("consensus distance: sum over agents instead of mean", "dimat_bench/population.py",
           ".sum(1).mean().item()", ".sum(1).sum().item()", (CONSENSUS,)),
    Mutant("consensus distance: BatchNorm buffers included", "dimat_bench/population.py",
           "flat = self.flat_parameters().double()",
           "flat = torch.stack([torch.cat([v.reshape(-1).double() for v in m.state_dict().values()]) "
           "for m in self.models])", (CONSENSUS,)),
    Mutant("SGP: equal shares normalised over the wrong axis", GOSSIP_PY,
           "support.sum(axis=0, keepdims=True)", "support.sum(axis=1, keepdims=True)", (SGP_PUSH,)),
    Mutant("SGP: parameters mixed with the transposed matrix", GOSSIP_PY,
           "mixed = push.to(pushed.dtype) @ pushed", "mixed = push.T.to(pushed.dtype) @ pushed", (SGP_PUSH,)),
    Mutant("SGP: push-sum weights never updated", GOSSIP_PY,
           "weights = push @ self.weights", "weights = self.weights", (SGP_PUSH,)),
    Mutant("out_degrees counts the wrong axis (receives, not sends)", "dimat_bench/methods/base.py",
           "return sends.sum(axis=0)", "return sends.sum(axis=1)", (SGP_DIRECTED,)),
    Mutant("aggregate: best round instead of the last", AGGREGATE_PY,
           'at_point = at_point[at_point["round"] == at_point.groupby(CELL_KEYS)["round"].transform("max")]',
           'at_point = at_point[at_point["test_acc"] == at_point.groupby(CELL_KEYS)["test_acc"].transform("max")]',
           (FINAL, TABLE)),
    Mutant("aggregate: paper point reads after_train for merge methods too", AGGREGATE_PY,
           'wanted = phase.isin(["initial", "after_merge"]) | ((phase == "after_train") & ~merges)',
           'wanted = phase.isin(["initial", "after_train"])', (FINAL, TABLE)),
    Mutant("aggregate: the first round instead of the last", AGGREGATE_PY,
           'at_point["round"] == at_point.groupby(CELL_KEYS)["round"].transform("max")',
           'at_point["round"] == 1 + 0 * at_point["round"]', (FINAL, TABLE)),
    Mutant("aggregate: std over seeds with ddof 0", AGGREGATE_PY,
           'grouped["final_pct"].std(ddof=1)', 'grouped["final_pct"].std(ddof=0)', (TABLE,)),
    Mutant("aggregate: best per row (method) instead of per column (setting)", AGGREGATE_PY,
           '(table["mean"] >= table["setting"].map(best))',
           '(table["mean"] >= table["method"].map(methods.groupby("method")["mean"].max()))', (TABLE,)),
    # The communication schedule (issue 13's plug-in contract) and what is drawn from it.
    Mutant("schedule: a step method exchanges one step late", BASE_PY,
           "self.steps_done % schedule.period == 0", "self.steps_done % schedule.period == 1", (PERIOD, PAVG)),
    Mutant("schedule: exchanges counted per round, rounded down (a non-dividing period)", BASE_PY,
           "return steps_per_epoch * epochs_per_round * rounds // self.period",
           "return steps_per_epoch * epochs_per_round // self.period * rounds", (PERIOD,)),
    Mutant("schedule: a merge every epoch instead of every round in the table", BASE_PY,
           '"round": Fraction(1, epochs_per_round)', '"round": Fraction(1)', (COMM_FIGURE,)),
    Mutant("gossip: the consensus step forgets to mix", GOSSIP_PY,
           "return (mixing @ params).add_(grads, alpha=-lr)", "return params.add_(grads, alpha=-lr)",
           (f"{SCHEDULE}[cdsgd]",)),
    Mutant("gossip: the message counts every other step", GOSSIP_PY,
           "self.sent(self.messages_per_step, self.elements)",
           "self.sent(self.messages_per_step * (step % 2), self.elements)", (f"{SCHEDULE}[sgp]",)),
    Mutant("merge: the fc shortcut's messages counted as a full exchange", MERGE_PY,
           "if merges_once(matrix, options):\n            counts", "if False:\n            counts",
           (f"{GRAPH}[dimat-fc]",)),
    Mutant("figures: the accuracy curve averages agents of the wrong phase", "dimat_bench/aggregate.py",
           'wanted = phase.isin(["initial", "after_train"])\n', 'wanted = phase.isin(["initial", "after_merge"])\n',
           (CURVES,)),
    # The shared matching pass and the cost estimate (issue 12).
    Mutant("shared pass: features of the anchor used for both sides of an edge", MATCHING_PY,
           "add_cross(cross, centred[i][g], centred[j][g]", "add_cross(cross, centred[i][g], centred[i][g]",
           (SHARED_PASS, STREAMED)),
    Mutant("estimate: the per-agent path's anchor pass not counted", MERGE_PY,
           "matching = sum((1 + len(neighbours[i])) * per_agent[i] for i in anchors)",
           "matching = sum(len(neighbours[i]) * per_agent[i] for i in anchors)", (f"{DECLARED}[False-ring]",)),
    Mutant("matching memory cap: a batch's last chunk dropped", MATCHING_PY,
           "for part in images.split(chunk) if chunk else (images,):",
           "for part in images.split(chunk)[:-1] if chunk else (images,):", (CHUNKS,)),
    # Faults of the machine: a full disk is an OSError naming the file (exit 1, no failure record).
    Mutant("full disk: torch.save's RuntimeError re-raised as it is, not as an OSError", CHECKPOINT_PY,
           "raise failed_write(path, needed, error) from None", "raise", (TORCH_SAVE,)),
    Mutant("full disk: the checkpoint's size counted as 0 bytes (a full disk reported as EIO)", CHECKPOINT_PY,
           'needed = sum(t.nbytes for t in payload["agents"][0].values()) * len(payload["agents"])', "needed = 0",
           (TORCH_SAVE,)),
    Mutant("full disk: failed_write converts with EIO where the folder has no room", RESULTS_PY,
           "return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))",
           "return OSError(errno.EIO, os.strerror(errno.ENOSPC), str(path))", (TORCH_SAVE,)),
    Mutant("full disk: a failed write that names no file is not named by its target", RESULTS_PY,
           "if error.filename is None:", "if False:", (UNNAMED_WRITE,)),
    # SIGTERM (a scheduler's time limit): one line, exit 143, nothing left that looks complete.
    Mutant("SIGTERM: main installs no handler (the signal reaches the caller's)", CLI_PY,
           "previous = signal.signal(signal.SIGTERM,", "previous = signal.getsignal(signal.SIGTERM); (signal.SIGTERM,",
           (SIGTERM,)),
    Mutant("SIGTERM: the stopped command exits 0", CLI_PY,
           "return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)", "return 0",
           (SIGTERM,)),
    Mutant("SIGTERM: main leaves its handler installed after it returns", CLI_PY,
           "    finally:\n        signal.signal(signal.SIGTERM, previous)", "    finally:\n        pass", (SIGTERM,)),
    Mutant("SIGTERM: a stop that is no Exception publishes the half-written output", RESULTS_PY,
           "if exc_type is not None:", "if exc_type is not None and issubclass(exc_type, Exception):",
           (SIGNAL_STOP,)),
    # The preflight: a GPU-scale grid on a host without a GPU stops unless the config confirms it.
    Mutant("preflight: confirm_cost ignored", PREFLIGHT_PY,
           'if truthy(config.get("confirm_cost", False)):', "if False:", (GATE,)),
    Mutant("preflight: confirm_cost read with bool (the string 'false' confirms)", PREFLIGHT_PY,
           'truthy(config.get("confirm_cost", False))', 'bool(config.get("confirm_cost", False))', (GATE,)),
    Mutant("preflight: the CPU-hours comparison inverted", PREFLIGHT_PY,
           "cpu_hours <= CPU_HOURS_LIMIT:", "cpu_hours >= CPU_HOURS_LIMIT:", (GATE,)),
    Mutant("preflight: the CPU-hours limit not tested (every GPU-less host stops)", PREFLIGHT_PY,
           "if gpus or cpu_hours <= CPU_HOURS_LIMIT:", "if gpus:", (GATE,)),
    Mutant("preflight: the host's GPUs ignored", PREFLIGHT_PY,
           "if gpus or cpu_hours <= CPU_HOURS_LIMIT:", "if cpu_hours <= CPU_HOURS_LIMIT:", (GATE,)),
    Mutant("preflight: the host's cores ignored (the CPU time of one core)", PREFLIGHT_PY,
           "cpu_hours = flops / (CPU_FLOPS * cores) / 3600", "cpu_hours = flops / CPU_FLOPS / 3600", (GATE,)),
    # publish: the user's figures folder loses only what the last publication put there.
    Mutant("publish: every file in the folder that is not a new figure removed (.gitkeep, a user's own)",
           FIGURES_PY, "for stale in sorted(before - set(names)):",
           "for stale in sorted({p.name for p in target.iterdir() if p.is_file()} - set(names)):", (PUBLISH,)),
    Mutant("publish: the manifest lists every file of the folder (the next publication removes the user's)",
           FIGURES_PY, 'write_json(manifest, {"files": names,',
           'write_json(manifest, {"files": sorted(p.name for p in target.iterdir() if p.is_file()),', (PUBLISH,)),
    Mutant("publish: a manifest entry naming a path outside the folder removed", FIGURES_PY,
           'if "/" not in stale and stale != PUBLISHED:', "if stale != PUBLISHED:", (PUBLISH,)),
    Mutant("publish: the last publication's figures never removed", FIGURES_PY,
           "(target / stale).unlink(missing_ok=True)", "None", (PUBLISH,)),
    # The plan: what identifies a job is set per job, never by a shared block; flags reach the shell intact.
    Mutant("plan: `seed` in a shared run: block not rejected", PLAN_PY,
           '"run": ["method", "topology", "seed", "pretrained", "data_dir"]',
           '"run": ["method", "topology", "pretrained", "data_dir"]', (f"{SHARED_BLOCK}[run-seed-3]",)),
    Mutant("plan: a shared pretrain: block may set the pretraining's cell keys", PLAN_PY,
           'JOB_KEYS = {"pretrain": PRETRAIN_KEYS + ["data_dir"]', 'JOB_KEYS = {"pretrain": ["data_dir"]',
           (f"{SHARED_BLOCK}[pretrain-seed-1]", f"{SHARED_BLOCK}[pretrain-width-2]")),
    Mutant("plan.flags: values not shell-quoted", PLAN_PY, "{shlex.quote(str(value))}", "{value}", (FLAGS,)),
    Mutant("plan.flags: a False switch passed as the switch itself", PLAN_PY,
           'cfg.flag(key) if value else "--no-" + cfg.flag(key)[2:]', "cfg.flag(key)", (FLAGS,)),
    Mutant("setting_label: the width shown for vgg16_bn only (two ResNet-20 widths share a column)",
           "dimat_bench/aggregate.py", "{row['model']}×{row['width']}",
           "{row['model']}{'×' + str(row['width']) if row['model'] == 'vgg16_bn' else ''}", (WIDTHS,)),
    # Workflow jobs (aggregate, claims, figures, ...): a fault of the machine ends them in one line.
    Mutant("workflow_job: an OSError not caught (the job ends in a traceback)", RESULTS_PY,
           "    except OSError as error:\n        line, status =", "    except ZeroDivisionError as error:\n        line, status =",
           (f"{WF_READ_ONLY}[aggregate]", WF_FULL_DISK)),
    Mutant("workflow_job: no SIGTERM handler installed (the job dies without its line)", RESULTS_PY,
           "previous = signal.signal(signal.SIGTERM, on_sigterm)", "previous = signal.getsignal(signal.SIGTERM)",
           (WF_SIGTERM,)),
    Mutant("workflow_job: a fault's line goes to the log only, not to the console Snakemake shows", RESULTS_PY,
           "        print(line, file=console, flush=True)", "        pass", (f"{WF_READ_ONLY}[aggregate]",)),
    Mutant("atomic_path: a failed mkstemp names the temporary folder's entry, not the output", RESULTS_PY,
           "raise OSError(error.errno, error.strerror or str(error), str(path)) from error\n    os.close(fd)",
           "raise\n    os.close(fd)", (f"{WF_READ_ONLY}[aggregate]",)),
    # Verdicts: a paired t-interval over seeds, zero excluded in the claimed direction, at least 3 seeds.
    Mutant("verdict: the normal quantile instead of Student's t (too narrow with 3-5 seeds)", CLAIMS_PY,
           "float(student_t.ppf((1 + level) / 2, n - 1))", "1.959963984540054", (INTERVAL, OLD_RULE)),
    Mutant("verdict: the differences' sd with n degrees of freedom", CLAIMS_PY,
           "float(differences.std(ddof=1)) / math.sqrt(n)", "float(differences.std(ddof=0)) / math.sqrt(n)",
           (INTERVAL,)),
    Mutant("verdict: holds when the mean difference is positive, whatever the interval", CLAIMS_PY,
           'verdict = "holds" if low > 0 else', 'verdict = "holds" if mean > 0 else', (OLD_RULE,)),
    Mutant("verdict: two paired seeds judged", CLAIMS_PY, "    if n < MIN_SEEDS:\n", "    if n < 2:\n", (PAIRING,)),
    Mutant("verdict: seeds paired by their order in the table, not by their number", CLAIMS_PY,
           "differences = (ours - theirs).dropna()",
           "differences = pd.Series(ours.to_numpy() - theirs.to_numpy()[:len(ours)]).dropna()", (PAIRING,)),
    # The final global merge: every agent aligned to agent 0 on fresh statistics, on copies, counted once.
    Mutant("final merge: each agent aligned to the one before it, not to agent 0", FINAL_PY,
           "[(0, j) for j in range(1, n)]", "[(j - 1, j) for j in range(1, n)]", (FINAL_ALIGNED, FINAL_COPIES)),
    Mutant("final merge: matched on the agents' stale statistics", FINAL_PY,
           "    reset_batchnorm(copies, batches(), False, population.autocast)\n", "", (FINAL_ALIGNED,)),
    Mutant("final merge: the aligned merge keeps the averaged statistics (no reset after it)", FINAL_PY,
           "    reset_batchnorm(aligned, batches(), False, population.autocast)\n", "", (FINAL_ALIGNED,)),
    Mutant("final merge: the agents themselves reset and permuted (no copies)", FINAL_PY,
           "copies = [copy.deepcopy(model) for model in population.models]", "copies = population.models",
           (FINAL_ALIGNED, FINAL_CELL)),
    Mutant("final merge: the plain average leaves the last agent out", FINAL_PY,
           "average.load_state_dict(weighted_sum(states, [1 / n] * n))",
           "average.load_state_dict(weighted_sum(states[:-1], [1 / (n - 1)] * (n - 1)))", (FINAL_ALIGNED,)),
    Mutant("final merge: matching images drawn from the whole training subset, not the shards' union", FINAL_PY,
           "pool = torch.cat(list(population.shards))",
           "pool = torch.arange(len(population.train), device=population.device)",
           (FINAL + "test_the_matching_images_are_the_union_of_the_shards_not_the_whole_training_subset",)),
    Mutant("final merge: final.csv's average column reads the aligned merge", AGGREGATE_PY,
           'final[f"{phase}_acc"] = last[last["phase"] == phase]',
           'final[f"{phase}_acc"] = last[last["phase"] == "final_merge_aligned"]', (FINAL_TABLE,)),
    Mutant("Z1: the final merge judged against the agents at the paper's point, not the agents it merged", CLAIMS_PY,
           'agents = 100 * per_seed(final, setting, method, "after_train_acc")',
           'agents = 100 * per_seed(final, setting, method, "paper_acc")', (Z1,)),
    Mutant("Z1: one row per setting for the first method only", CLAIMS_PY,
           "for method in sorted(m for m in cells[\"method\"].unique() if not union_pretraining(m)):",
           "for method in sorted(m for m in cells[\"method\"].unique() if not union_pretraining(m))[:1]:",
           (Z1,)),
    # The ceiling: one model on the union of the shards, from its own pretraining on that union.
    Mutant("centralized: the union pretraining holds agent 0's shard only", "dimat_bench/pretrain.py",
           "shards, class_counts = [np.sort(np.concatenate(split.shards))], class_counts.sum(0, keepdims=True)",
           "shards, class_counts = [split.shards[0]], class_counts[:1]",
           (CENTRAL + "test_the_union_pretraining_is_one_model_on_every_image_the_agents_hold",)),
    Mutant("centralized: the union model drawn from agent 1's init", "dimat_bench/pretrain.py",
           'torch.manual_seed(derive_seed(config.seed, "init", i))',
           'torch.manual_seed(derive_seed(config.seed, "init", i + bool(config.union)))',
           (CENTRAL + "test_the_union_pretraining_starts_from_agent_0s_init",)),
    Mutant("centralized: the planner gives it the agents' pretraining", "dimat_bench/grid.py",
           '"union": union_pretraining(cell["method"])}', '"union": False}',
           (CENTRAL + "test_the_planner_gives_centralized_cells_the_union_pretraining_and_every_other_the_agents",)),
    Mutant("centralized: a method run from the wrong kind of pretraining", "dimat_bench/run.py",
           "    if wanted != union:\n", "    if False:\n",
           (CENTRAL + "test_each_method_rejects_the_other_kind_of_pretraining_before_any_compute",)),
    Mutant("centralized: its start taken for the agents' in the pretrained row", AGGREGATE_PY,
           'agents = ~final["method"].map(union_pretraining).astype(bool)', 'agents = final["method"] == final["method"]',
           (CENTRAL + "test_the_pretrained_row_is_the_agents_start_not_the_centralized_models",)),
    Mutant("final merge: the estimate leaves it out", "dimat_bench/estimate.py",
           "    if run.final_merge and models > 1:  # once per cell",
           "    if False:  # once per cell", (HAND_COUNTS,)),
    # Communication budgets: M of the R rounds merge, placed early, uniformly or late, counted alike.
    Mutant("budget: uniform placement rounds the slice centres down", BASE_PY,
           "return [-(-(2 * i - 1) * rounds // (2 * m)) for i in range(1, m + 1)]",
           "return [max(1, (2 * i - 1) * rounds // (2 * m)) for i in range(1, m + 1)]",
           (BUDGETS + "test_each_placement_merges_in_exactly_its_rounds",)),
    Mutant("budget: late placement one round early", BASE_PY,
           "return list(range(rounds - m + 1, rounds + 1))", "return list(range(rounds - m, rounds))", (PLACEMENTS,)),
    Mutant("budget: a budget above R accepted (the run fails later)", BASE_PY,
           "(self.budget is None or self.budget > rounds)", "self.budget is None", (BUDGET_CHECK,)),
    Mutant("budget: the runner merges in every round whatever the budget", "dimat_bench/run.py",
           "        if r in merging:", "        if method.family == \"merge\":", (BUDGET_RUN,)),
    Mutant("budget: a run's exchanges counted as R for a budgeted schedule", BASE_PY,
           "            return len(self.rounds(rounds))", "            return rounds", (BUDGET_TABLE,)),
    Mutant("budget: messages per epoch at every round's rate", BASE_PY,
           "        if self.budgeted:\n            if rounds is None:",
           "        if False:\n            if rounds is None:",
           (BUDGET_TABLE,)),
    Mutant("budget: the estimate counts R merges", "dimat_bench/estimate.py",
           "(merges if method.family == \"merge\" else run.rounds) * count", "run.rounds * count", (BUDGET_ESTIMATE,)),
    Mutant("budget: the paper's point skips the rounds without a merge", AGGREGATE_PY,
           "    if len(entering):  # in round order", "    if False:  # in round order", (BUDGET_POINT,)),
    Mutant("Z2: a claim's measure ignored (the paper's point read)", CLAIMS_PY,
           '    column = f"{measure}_acc"\n', '    column = "paper_acc"\n', (MEASURE,)),
    Mutant("figures: the pretrained line averages in the centralized model's start", "dimat_bench/figures.py",
           'agents = ~frame["method"].map(union_pretraining).astype(bool)', 'agents = frame["method"] == frame["method"]',
           ("tests/test_figures.py::test_the_pretrained_line_is_the_agents_start_not_the_centralized_models",)),
    # Networks as they are (issue 22): time-varying and directed graphs, lost messages, absent agents.
    Mutant("faults: a lost message still counted as delivered", NETWORK_PY,
           "delivered = sent & ~lost & ~absent[:, None]", "delivered = sent & ~absent[:, None]", (RENORMALISED,)),
    Mutant("faults: drawn from the global torch stream that data order shares", NETWORK_PY,
           "lost = rng.random((n, n)) < self.drop_rate",
           'lost = __import__("torch").rand((n, n)).numpy() < self.drop_rate', (FAULT_STREAM,)),
    Mutant("faults: a merge's weights not renormalised over what arrived", NETWORK_PY,
           "out[touched] = rows / rows.sum(axis=1, keepdims=True)", "out[touched] = rows", (RENORMALISED, ONE_LEFT)),
    Mutant("faults: an absent agent still sends", NETWORK_PY,
           "sent = support & ~absent[None, :]", "sent = support", (ABSENT,)),
    Mutant("faults: push-sum keeps a lost message's share", NETWORK_PY,
           "out = np.where(self.delivered | np.eye(n, dtype=bool), push, 0.0)", "out = np.array(push, dtype=float)",
           (ABSENT,)),
    Mutant("sgp_resend: a link's undelivered mass forgotten when it is lost again", "dimat_bench/methods/gossip.py",
           "x, w = x0.add_(x), w0 + w", "pass", (RESENT_TOY,)),
    Mutant("sgp_resend: the undelivered weight never delivered", "dimat_bench/methods/gossip.py",
           "            weights[i] += w", "            pass", (RESENT, RESENT_TOY)),
    Mutant("sgp_resend: the lost share taken from the receiver's model instead of the sender's",
           "dimat_bench/methods/gossip.py", "pushed[j] * float(shares[i, j])", "pushed[i] * float(shares[i, j])",
           (RESENT, RESENT_TOY)),
    Mutant("communication table: an absent receiver's messages counted as delivered", NETWORK_PY,
           "return present, present * present * (1.0 - drop_rate)", "return present, present * (1.0 - drop_rate)",
           (NETWORK + "test_the_expected_sent_and_delivered_fractions_are_what_the_fault_draws_give",
            "tests/test_communication.py::test_the_grids_fault_settings_add_expected_sent_and_delivered_messages_per_run")),
    Mutant("communication table: a grid's fault settings not read from its cells", "dimat_bench/grid.py",
           "        pairs.add((keys.get(\"drop_rate\", 0.0), keys.get(\"absent_rate\", 0.0)))", "        pass",
           ("tests/test_communication.py::test_the_grids_fault_settings_add_expected_sent_and_delivered_messages_per_run",)),
    Mutant("faults: each method of a cell drawing its own faults (seeded by the method name)", "dimat_bench/run.py",
           "return Faults(self.drop_rate, self.absent_rate, self.seed)",
           "return Faults(self.drop_rate, self.absent_rate, self.seed + len(self.method))",
           (NETWORK + "test_every_method_of_a_cell_meets_the_same_graphs_and_faults_through_the_run_command",)),
    Mutant("time-varying: every round merges over exchange 0's graph", "dimat_bench/methods/merge.py",
           "self.topology.at(round_index - 1)", "self.topology.at(0)", (VARYING_MERGE,)),
    Mutant("time-varying: a gossip step mixes over the expected matrix", "dimat_bench/methods/gossip.py",
           "            if not self.perfect_network:", "            if self.faults.active:", (VARYING_GOSSIP,)),
    Mutant("one-peer exponential: the hop one step ahead of the exchange", "dimat_bench/topology.py",
           "adjacency[(i + hops[t % len(hops)]) % n, i] = True", "adjacency[(i + hops[(t + 1) % len(hops)]) % n, i] = True",
           (ONE_PEER, VARYING_MERGE)),
    Mutant("cdsgd: a directed graph that is not doubly stochastic accepted", "dimat_bench/methods/gossip.py",
           "        if not (self.needs_doubly_stochastic and self.topology.directed):",
           "        if True:", (DOUBLY,)),
    Mutant("networks: a method that reads only the static graph runs on a changing or faulty one", BASE_PY,
           "        if not self.perfect_network and not self.supports_networks:",
           "        if False:", (NETWORK + "test_a_method_that_reads_only_the_static_graph_is_stopped_on_a_changing_or_faulty_network",)),
]


def tree_files(root: Path) -> list[str]:
    """The working tree's files as git sees them: tracked (as they are now) and untracked, not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sorted({f for f in listed if f and (root / f).is_file()})


def copy_tree(root: Path, files: list[str], target: Path) -> None:
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target / name)


def check_table(root: Path, mutants: list[Mutant]) -> list[str]:
    """Problems that make the table stale: an old text that does not occur exactly once."""
    problems = []
    for m in mutants:
        path = root / m.path
        count = path.read_text().count(m.old) if path.is_file() else -1
        if count != 1:
            found = "no such file" if count < 0 else f"found {count} times"
            problems.append(f"{m.description}: {m.old!r} in {m.path}: {found}, not once")
    return problems


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """(pytest's exit status, or None after `timeout` seconds; its output) for `tests` in `copy`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return result.returncode, result.stdout + result.stderr


def first_failure(output: str) -> str:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return found.group(1) if found else "(no test named in the output)"


def in_copy(root: Path, files: list[str], edit: Mutant | None, run):
    """Call `run(copy)` on a fresh copy of the tree, with `edit` applied there."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        copy = Path(tmp)
        copy_tree(root, files, copy)
        if edit is not None:
            target = copy / edit.path
            target.write_text(target.read_text().replace(edit.old, edit.new))
        return run(copy)


def baseline(root: Path, files: list[str], tests: list[str], timeout: float) -> str | None:
    """None when the copy imports its own package and every selected test passes there, else why not."""
    def run(copy: Path):
        where = subprocess.run([sys.executable, "-c", "import dimat_bench; print(dimat_bench.__file__)"], cwd=copy,
                               env={**os.environ, "PYTHONPATH": str(copy)}, capture_output=True, text=True)
        if not where.stdout.strip().startswith(str(copy)):
            return f"the copy imports dimat_bench from {where.stdout.strip() or where.stderr.strip()}"
        status, output = run_tests(copy, tuple(tests), timeout * 4)
        return None if status == 0 else f"pytest exit {status}:\n{output[-3000:]}"
    return in_copy(root, files, None, run)


def judge(root: Path, files: list[str], mutant: Mutant, timeout: float) -> tuple[str, str]:
    """("killed" | "survived" | "stale", what to print)."""
    start = time.perf_counter()
    status, output = in_copy(root, files, mutant, lambda copy: run_tests(copy, mutant.tests, timeout))
    seconds = f"{time.perf_counter() - start:.0f} s"
    if status is None:
        return "killed", f"killed by a timeout ({timeout:.0f} s)"
    if status == 0:
        return "survived", f"SURVIVED ({seconds})"
    if status in (1, 2):  # tests failed, or collection broke (the mutant does not even import)
        return "killed", f"killed by {first_failure(output)} ({seconds})"
    return "stale", f"pytest exit {status} (a test id that no longer exists?):\n{output[-2000:]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", metavar="SUBSTRING", help="only the mutants whose description has it")
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutant's tests (300)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (1; each pytest uses every core)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the unmutated tests")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.only.lower() in m.description.lower()]
    if args.list:
        for m in mutants:
            print(f"{m.description}\n    {m.path}: {m.old!r} -> {m.new!r}\n    tests: {' '.join(m.tests)}")
        return 0
    if not mutants:
        print(f"no mutant's description contains {args.only!r}", file=sys.stderr)
        return 2
    problems = check_table(ROOT, mutants)
    if problems:
        print("stale mutant table:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    files = tree_files(ROOT)
    if not args.no_baseline:
        tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
        failed = baseline(ROOT, files, tests, args.timeout)
        if failed:
            print(f"baseline: {failed}", file=sys.stderr)
            return 2
        print(f"baseline: {len(tests)} test selections pass unmutated")
    return report(mutants, files, args)


def report(mutants: list[Mutant], files: list[str], args) -> int:
    counts = {"killed": 0, "survived": 0, "stale": 0}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        verdicts = pool.map(lambda m: judge(ROOT, files, m, args.timeout), mutants)
        for mutant, (verdict, text) in zip(mutants, verdicts):
            counts[verdict] += 1
            print(f"{mutant.description}: {text}", flush=True)
    print(f"{len(mutants)} mutants: {counts['killed']} killed, {counts['survived']} survived"
          + (f", {counts['stale']} stale" if counts["stale"] else ""))
    return 2 if counts["stale"] else 1 if counts["survived"] else 0


if __name__ == "__main__":
    sys.exit(main())
