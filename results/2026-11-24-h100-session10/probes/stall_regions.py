# Warp-stall samples of one forward kernel by region of its main loop, from ncu's source page
# (ncu -i report --page source --csv --print-source sass > sass.csv). The region bounds are
# SASS row numbers of the kernel that was profiled (the first 3-buffer persistent forward,
# before the copies moved under S), read off the barrier and wgmma-wait rows.
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr, data = rows[1], rows[2:]
i_src, i_s, i_ex = hdr.index("Source"), hdr.index("Warp Stall Sampling (All Samples)"), hdr.index("Instructions Executed")
reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
ri = [hdr.index(h) for h in reasons]
loop_iters = max(int(r[i_ex] or 0) for r in data)  # executions of a main-loop instruction
regions = [("before the loop (tile start, block 0)", 0, 2299), ("top: cp.async wait + CTA barrier", 2299, 2320),
           ("S and P V wgmma issue", 2320, 2430), ("K/V copies", 2430, 3246), ("wait for S", 3246, 3247),
           ("scale and mask (between the waits)", 3247, 3707), ("wait for P V", 3707, 3708),
           ("max, exp2, sum, pack, rescale", 3708, 4022), ("last P V and the output store", 4022, len(data))]
tot = sum(int(r[i_s]) for r in data)
print(f"{tot} samples; main loop executed {loop_iters} warp-iterations")
for name, a, b in regions:
    seg = data[a:b]
    n = sum(int(r[i_s]) for r in seg)
    ins = sum(int(r[i_ex] or 0) for r in seg) / loop_iters
    rs = sorted(((reasons[k][6:], sum(int(r[ri[k]] or 0) for r in seg)) for k in range(len(ri))), key=lambda x: -x[1])[:4]
    print(f"{name:40s} {100 * n / tot:5.1f} % of samples, {ins:6.1f} instr per loop iteration; " + ", ".join(f"{k} {v}" for k, v in rs))
