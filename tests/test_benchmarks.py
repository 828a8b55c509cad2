import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_population_overhead_benchmark_runs_and_prints_the_ratio(data_dir):
    """The benchmark itself is timed by hand; this only guards that the script still runs."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "population_overhead.py"), "--data-dir",
                             str(data_dir), "--images", "200", "--agents", "2", "--batch-size", "50", "--repeats", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ratio population / plain:" in result.stdout
    assert "population, 2 agents x 100 images" in result.stdout


def test_merge_cost_benchmark_counts_the_passes_of_both_paths_and_finds_them_identical(data_dir):
    """Timing is by hand; the pass counts and the identity are exact: a 4-ring, 20 of 100 images."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "merge_cost.py"), "--data-dir", str(data_dir),
                             "--agents", "4", "--match-samples", "20", "--train-images", "100", "--repeats", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # per agent: itself and its 2 neighbours reset and matched (4 x 3 each), then its merge reset
    assert ("per-agent path:   28.0 forward passes/round (reset before matching 12.0, matching 12.0, reset after "
            "merge 4.0; 7.0 per model; round_images declares 28.0)") in result.stdout
    # shared: every model reset once, matched once, its merge reset once
    assert ("shared pass:      12.0 forward passes/round (reset before matching 4.0, matching 4.0, reset after "
            "merge 4.0; 3.0 per model; round_images declares 12.0)") in result.stdout
    assert "identical merges: yes" in result.stdout


def final_csv(directory: Path, rows: list[dict]) -> Path:
    """A grid's tables/final.csv with the columns the analysis scripts read."""
    import pandas as pd

    base = {"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 5, "split": "iid", "topology": "ring",
            "final_merge_average_acc": 0.1, "final_merge_aligned_acc": 0.1, "merge_penalty_first": float("nan"),
            "status": "complete"}
    (directory / "tables").mkdir(parents=True)
    pd.DataFrame([base | row for row in rows]).to_csv(directory / "tables" / "final.csv", index=False)
    return directory


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_parity_pairs_cells_by_seed_and_decides_from_the_pooled_interval(tmp_path):
    """dimat's bf16 − fp32 at the paper's point is +1, +2, +3 points over the seeds: mean +2.00, sd 1,
    t(0.975, 2) = 4.303, so the interval is 2 ± 4.303/√3 = [−0.48, +4.48]; wa's are 0. Pooled over the
    6 pairs (+1, +2, +3, 0, 0, 0: sd 1.265) the paper's point's interval is 1 ± 2.571·1.265/√6 =
    [−0.33, +2.33], outside ±1: no parity;
    with a margin of 3 it holds."""
    fp32, bf16 = [], []
    for seed in range(3):
        for method, shift in (("dimat", seed + 1), ("wa", 0)):
            cell = {"method": method, "seed": seed, "paper_acc": 0.30, "after_train_acc": 0.25}
            fp32.append(cell)
            bf16.append(cell | {"paper_acc": 0.30 + shift / 100})
    bf16.append({"method": "sgp", "seed": 0, "paper_acc": 0.9, "after_train_acc": 0.9})  # no fp32 twin: left out
    args = (final_csv(tmp_path / "fp32", fp32), final_csv(tmp_path / "bf16", bf16), "--no-throughput")
    result = run_script("parity.py", *args)
    assert result.returncode == 0, result.stderr
    assert "| iid | ring | dimat | paper's point | 30.00 | 32.00 | +2.00 [-0.48, +4.48] | 3 |" in result.stdout
    assert "| iid | ring | wa | paper's point | 30.00 | 30.00 | +0.00 [+0.00, +0.00] | 3 |" in result.stdout
    assert "pooled over 6 cell pairs, paper's point: bf16 − fp32 = +1.00 [-0.33, +2.33] points: NOT within" \
        in result.stdout
    assert "parity does not hold" in result.stdout and "sgp" not in result.stdout
    assert "parity holds (margin ±3.0 points)" in run_script("parity.py", *args, "--margin", "3").stdout


def test_evidence_finds_the_smallest_cheap_width_the_trend_and_who_ends_above_local(tmp_path):
    """IID: DIMAT's first merge costs 8, 1.5 and 0.5 points at widths 1, 2, 4 (± 0.5 over seeds), so
    width 2 is the smallest below 2 (4 is below too). Non-IID: 12, 9, 6: none; the line through them gains 3 points per
    doubling and reaches −2 at log2(w) = 10/3, width ≈ 10. WA ends 5 ± 0.5 points above local at
    width 4 (IID, paper's point) and nowhere else; centralized is above everywhere but is the ceiling."""
    rows = []
    for split, costs in (("iid", (8, 1.5, 0.5)), ("noniid", (12, 9, 6))):
        for width, cost in zip((1, 2, 4), costs):
            for seed, noise in enumerate((-0.5, 0.0, 0.5)):
                common = {"split": split, "width": width, "seed": seed, "after_train_acc": 0.2}
                rows.append(common | {"method": "dimat", "paper_acc": 0.2, "merge_penalty_first": -cost + noise})
                rows.append(common | {"method": "local", "paper_acc": 0.3})
                wa = 0.35 + noise / 100 if (split, width) == ("iid", 4) else 0.3 - 0.01 * (seed + 1)
                rows.append(common | {"method": "wa", "paper_acc": wa, "merge_penalty_first": -20.0})
                rows.append(common | {"method": "centralized", "paper_acc": 0.6})
    result = run_script("evidence.py", final_csv(tmp_path / "grid", rows))
    assert result.returncode == 0, result.stderr
    assert "| iid | -8.00 ± 0.50 | -1.50 ± 0.50 | -0.50 ± 0.50 | width 2 |" in result.stdout
    assert ("| noniid | -12.00 ± 0.50 | -9.00 ± 0.50 | -6.00 ± 0.50 | none; the penalty shrinks 3.0 points per "
            "doubling, a line through the widths reaches −2 at width ≈ 10 (an extrapolation) |") in result.stdout
    assert result.stdout.rstrip().endswith("ends above local (interval above zero; centralized, the ceiling, left "
                                           "out): wa at width 4, iid, paper's point: +5.00 [+3.76, +6.24]")
    missing = run_script("evidence.py", tmp_path / "nothing")
    assert missing.returncode == 2 and "tables/final.csv" in missing.stderr and "Traceback" not in missing.stderr
