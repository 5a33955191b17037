# Median ncu kernel durations of kdur4.py, by launch position: cudnn, s9, this, other grid.
import csv, statistics, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10 and r[-3] == "gpu__time_duration.sum"]
ks = [float(r[-1].replace(",", "")) for r in rows if "cudnn" in r[4] or "ftpoc" in r[4]]
names = ["cudnn", "session 9", "this (default grid)", "this (other grid)"]
for i, lab in enumerate(["TinyLlama L=2048", "TinyLlama L=4096", "Qwen2.5-1.5B L=2048", "Qwen2.5-1.5B L=4096"]):
    chunk = ks[i * 20:(i + 1) * 20]
    base = statistics.median(chunk[0::4])
    for j, n in enumerate(names):
        m = statistics.median(chunk[j::4])
        print(f"{lab:20s} {n:20s} {m/1e3:8.1f} us  cudnn/this {base/m:.3f}  n={len(chunk[j::4])}")
