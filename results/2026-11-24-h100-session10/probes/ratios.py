import json, statistics, sys
runs = sys.argv[1:]
tab = {}
for r in runs:
    recs = [json.loads(l) for l in open(f"{r}/attention.jsonl") if l.strip()]
    by = {(x["tag"], x["length"], x["impl"]): x for x in recs if "impl" in x}
    for (tag, L, impl), x in by.items():
        if impl != "poc": continue
        d = by[(tag, L, "demo")]
        tab.setdefault((tag, L), []).append((d["fwd_ms"] / x["fwd_ms"], d["fwdbwd_ms"] / x["fwdbwd_ms"]))
print("| layout | L | fwd demo/poc per run | median | fwd+bwd demo/poc per run | median |")
print("|---|---|---|---|---|---|")
for (tag, L), v in sorted(tab.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    f = [a for a, _ in v]; b = [c for _, c in v]
    print(f"| {tag} | {L} | {' / '.join(f'{a:.2f}' for a in f)} | {statistics.median(f):.2f} | {' / '.join(f'{a:.2f}' for a in b)} | {statistics.median(b):.2f} |")
