# Median kernel duration per (layout/L block, kernel) from ncu's csv, in launch order groups.
import csv, statistics, sys, re
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10 and r[-3] == "gpu__time_duration.sum"]
ks = [(r[4], float(r[-1].replace(",", ""))) for r in rows if "cudnn" in r[4] or "ftpoc" in r[4]]
n_opts = int(sys.argv[2])
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 4
per = reps * (1 + n_opts)
labels = ["tiny 2048", "tiny 4096", "qwen 2048", "qwen 4096"]
for i, lab in enumerate(labels):
    chunk = ks[i * per:(i + 1) * per]
    by = {}
    for name, d in chunk:
        key = "cudnn" if "cudnn" in name else ("s9" if "fwd_s9" in name else ("this" if "flash_fwd_sm90" in name else re.sub(r".*_t_", "opt ", name.split("(")[0])))
        by.setdefault(key, []).append(d)
    base = statistics.median(by["cudnn"])
    for key, ds in by.items():
        m = statistics.median(ds)
        print(f"{lab} {key:12s} {m/1e3:8.1f} us  cudnn/this {base/m:.3f}  n={len(ds)}")
