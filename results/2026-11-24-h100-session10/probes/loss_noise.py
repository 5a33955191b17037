# Per-iteration training-loss distances between the runs of one compare call, warm-up runs
# included: the same implementation twice (same data, seed and model) measures the run-to-run
# noise; poc against demo is to be read against it. Usage: python loss_noise.py FOLDER
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import loss_agreement as la  # noqa: E402

folder = Path(sys.argv[1])
main, cold = la.read_runs(folder), la.read_runs(folder / "cold")
pairs = {"demo (warm-up run) vs demo": (cold["demo"], main["demo"]),
         "poc (warm-up run) vs poc": (cold["poc"], main["poc"]),
         "poc vs demo": (main["poc"], main["demo"]),
         "poc (warm-up run) vs demo": (cold["poc"], main["demo"]),
         "demo (warm-up run) vs poc": (cold["demo"], main["poc"])}
print("| pair | mean rel. distance | max | last 10 |\n|---|---|---|---|")
for name, (x, y) in pairs.items():
    d = la.distances(x, y)
    print(f"| {name} | {100 * d['mean']:.2f}% | {100 * d['max']:.2f}% | {100 * d['last10']:.2f}% |")
