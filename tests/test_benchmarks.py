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
