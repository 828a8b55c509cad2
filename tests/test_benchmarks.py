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
