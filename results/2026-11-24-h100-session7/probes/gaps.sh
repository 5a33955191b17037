# For each impl/mode: wall time, then the kernels of one call with their GPU durations.
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
for layout in ${GAPS_LAYOUTS:-tiny}; do for impl in ${GAPS_IMPLS:-poc demo}; do for mode in fwd fwdbwd; do
  f=/tmp/r/gaps-$impl-$layout-$mode.txt
  GAPS_PROFILE=1 timeout 120 $NCU --clock-control none --profile-from-start off --metrics gpu__time_duration.sum python3 .device/exp/gaps.py $impl $layout $mode > $f 2>&1
  grep WALL $f
  python3 - $f <<'PY'
import re, sys
text = open(sys.argv[1]).read()
names = re.findall(r"^  (\S+?)[(<].*Context", text, re.M)
durs = re.findall(r"gpu__time_duration.sum\s+(\S+)\s+([\d.,]+)", text)
total = 0.0
for n, (unit, val) in zip(names, durs):
    us = float(val.replace(",", "")) * {"ns": 1e-3, "us": 1, "usecond": 1, "nsecond": 1e-3, "ms": 1e3, "msecond": 1e3}.get(unit, 1)
    total += us
    print(f"   {us:9.1f} us  {n[:90]}")
print(f"   {total:9.1f} us  total GPU ({len(durs)} kernels)")
PY
done; done; done
