# Session-7 runs (wgmma backward); results under /tmp/r, packed into $OUT/r.tgz. Usage: bash s9.sh SHA stage...
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 FLASHTUNE_GIT_SHA=$1; shift
mkdir -p /tmp/r
for stage in "$@"; do
  start=$(date +%s)
  case "$stage" in
    bwdtest) timeout ${PT_TIMEOUT:-240} python3 -m pytest tests/attention/test_poc_cuda.py -q -x -k "sm90_backward or hopper" -p no:cacheprovider > /tmp/r/bwdtest.log 2>&1; tail -15 /tmp/r/bwdtest.log ;;
    bwdparts) timeout 200 python3 .device/exp/bwdparts.py 2>&1 | tee /tmp/r/bwdparts.txt | tail -6 ;;
    ncu) NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); timeout 240 $NCU --clock-control none -k regex:"ftpoc_flash_(bwd|fwd)_sm90" -s 2 -c 2 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SourceCounters python3 .device/exp/bwdone.py ${NCU_LAYOUT:-tiny} > /tmp/r/ncu-${NCU_LAYOUT:-tiny}.txt 2>&1; grep -E "Duration|Stall|Issue Slots Busy|Warp Cycles Per Issued|Compute \\(SM\\) Throughput|Memory Throughput|No Eligible|Registers" /tmp/r/ncu-${NCU_LAYOUT:-tiny}.txt | head -40 ;;
    gaps) bash .device/exp/gaps.sh 2>&1 | tee /tmp/r/gaps.txt | tail -60 ;;
    walls) bash .device/exp/walls.sh 2>&1 | tee /tmp/r/walls.txt | tail -30 ;;
    fwdopt) timeout ${FO_TIMEOUT:-500} python3 .device/exp/fwdopt.py ${FO_MODE:-all} 2>&1 | tee /tmp/r/fwdopt-${FO_MODE:-all}.txt | grep -v '^check.* ok$' | tail -80 ;;
    benchdp) mkdir -p /tmp/r/bench-demo-poc; timeout 480 python3 -m flashtune bench attention --sets training --impl demo,poc --no-anchor --out /tmp/r/bench-demo-poc/attention.jsonl > /tmp/r/bench-demo-poc/attention.md 2>&1; grep -E "^\| |demo L=1000" /tmp/r/bench-demo-poc/attention.md | cut -d'|' -f2-8,12 | head -30 ;;
    overhead) timeout 200 python3 .device/exp/overhead.py 2>&1 | tee /tmp/r/overhead.txt | tail -4 ;;
    fwdtest) timeout ${PT_TIMEOUT:-240} python3 -m pytest tests/attention/test_poc_cuda.py -q -x -k "${PT_K:-sm90_forward or hopper or writes_every or positive_scale}" -p no:cacheprovider > /tmp/r/fwdtest.log 2>&1; tail -15 /tmp/r/fwdtest.log ;;
    fwdws) timeout ${WS_TIMEOUT:-500} python3 .device/exp/fwdws.py ${WS_L:-2048,4096} ${WS_MODE:-both} 2>&1 | tee /tmp/r/fwdws-${WS_MODE:-both}.txt | tail -60 ;;
    abtime) timeout ${AB_TIMEOUT:-300} python3 .device/exp/abtime.py ${AB_L:-2048,4096} 2>&1 | tee /tmp/r/abtime.txt | tail -30 ;;
    launches) timeout 300 python3 .device/exp/launches.py ${AB_L:-2048,4096} 2>&1 | tee /tmp/r/launches.txt | tail -40 ;;
    lb) timeout 200 python3 .device/exp/lb.py 2>&1 | tee /tmp/r/lb.txt | tail -20 ;;
    fwdstall) NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); for lay in tiny qwen; do timeout 200 $NCU --clock-control none -k regex:"ftpoc_flash_fwd_sm90" -s 1 -c 1 --section WarpStateStats --section SchedulerStats --section SpeedOfLight --section Occupancy --page raw python3 .device/exp/fwdone.py $lay > /tmp/r/ncu-fwd-$lay-raw.txt 2>&1; echo "== $lay"; grep -E "issue_stalled.*per_issue_active|gpu__time_duration.sum|warps_active.avg.per_cycle|registers_per_thread|sm__throughput.avg.pct|issue_active.avg.pct" /tmp/r/ncu-fwd-$lay-raw.txt | awk '$NF+0 > 0.05 || /time|regist|throughput|issue_active/' | head -40; done ;;
    bn64) timeout 300 python3 .device/exp/bn64.py 2>&1 | tee /tmp/r/bn64.txt | tail -30 ;;
    fwdpers) timeout ${FP_TIMEOUT:-400} python3 .device/exp/fwdpers.py ${FP_L:-2048,4096} 2>&1 | tee /tmp/r/fwdpers.txt | tail -40 ;;
    fwdsrc) NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); timeout 300 $NCU --clock-control none -k regex:"ftpoc_flash_fwd_sm90" -s 1 -c 1 --section WarpStateStats --section SourceCounters --section SpeedOfLight --import-source no -o /tmp/r/fwdsrc -f python3 .device/exp/fwdone.py qwen 4096 > /tmp/r/fwdsrc.log 2>&1; tail -3 /tmp/r/fwdsrc.log; $NCU -i /tmp/r/fwdsrc.ncu-rep --page source --csv --print-source sass > /tmp/r/fwdsrc-sass.csv 2>&1; $NCU -i /tmp/r/fwdsrc.ncu-rep --page details > /tmp/r/fwdsrc-details.txt 2>&1; wc -l /tmp/r/fwdsrc-sass.csv; head -3 /tmp/r/fwdsrc-sass.csv | cut -c1-600 ;;
    fwdopt10) timeout ${FO_TIMEOUT:-300} python3 .device/exp/fwdopt10.py ${FO_L:-2048,4096} ${FO_OPTS:-0,1,2,3} 2>&1 | tee -a /tmp/r/fwdopt10.txt | tail -30 ;;
    kdur) NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); timeout 300 $NCU --clock-control none --metrics gpu__time_duration.sum --csv python3 .device/exp/kdur.py > /tmp/r/kdur.csv 2>/tmp/r/kdur.err; grep -c gpu__time /tmp/r/kdur.csv; python3 -c "
import csv,sys
rows=[r for r in csv.reader(open('/tmp/r/kdur.csv')) if len(r)>10 and r[-3]=='gpu__time_duration.sum']
for r in rows: print(r[4][:70].replace(',',';'), r[-1])
" | awk '{print}' | tail -80 ;;
    kdur2) NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); timeout 400 $NCU --clock-control none -k regex:"cudnn|ftpoc" --metrics gpu__time_duration.sum --csv python3 .device/exp/kdur2.py > /tmp/r/kdur2.csv 2>/tmp/r/kdur2.err; tail -3 /tmp/r/kdur2.err; python3 .device/exp/kdur_table.py /tmp/r/kdur2.csv $(echo ${KD_OPTS:-0,1,4,5} | tr ',' '\n' | wc -l) | tee -a /tmp/r/kdur2.txt ;;
    kdur3) NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); timeout 400 $NCU --clock-control none -k regex:"cudnn|ftpoc" --metrics gpu__time_duration.sum --csv python3 .device/exp/kdur3.py > /tmp/r/kdur3.csv 2>/tmp/r/kdur3.err; tail -3 /tmp/r/kdur3.err; python3 .device/exp/kdur_table.py /tmp/r/kdur3.csv 2 5 | tee -a /tmp/r/kdur3.txt ;;
    kdur4) NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); timeout 400 $NCU --clock-control none -k regex:"cudnn|ftpoc" --metrics gpu__time_duration.sum --csv python3 .device/exp/kdur4.py > /tmp/r/kdur4.csv 2>/tmp/r/kdur4.err; tail -3 /tmp/r/kdur4.err; python3 .device/exp/kdur_pos.py /tmp/r/kdur4.csv | tee /tmp/r/kernel-durations.txt ;;
    ident) IDENT=1 timeout 200 python3 .device/exp/kdur4.py 2>&1 | tee /tmp/r/bit-identical-to-session9.txt | tail -30 ;;
    bench3) for i in 1 2 3; do bash .device/exp/s10.sh $FLASHTUNE_GIT_SHA benchdp > /dev/null; rm -rf /tmp/r/bench/run$i; mkdir -p /tmp/r/bench; mv /tmp/r/bench-demo-poc /tmp/r/bench/run$i; done; python3 results/2026-11-24-h100-session9/probes/ratios.py /tmp/r/bench/run1 /tmp/r/bench/run2 /tmp/r/bench/run3 | tee /tmp/r/bench/ratios.md | grep -E "2048|4096" ;;
    benchall) mkdir -p /tmp/r/bench-all-impls; timeout 560 python3 -m flashtune bench attention --sets training --out /tmp/r/bench-all-impls/attention.jsonl > /tmp/r/bench-all-impls/attention.md 2>&1; grep -E "^\| " /tmp/r/bench-all-impls/attention.md | grep -E "2048|4096" | cut -d'|' -f2-11 ;;
    fwdab) timeout 300 python3 .device/exp/fwdab.py ${AB_L:-2048} 2>&1 | tee /tmp/r/fwdab.txt | tail -40 ;;
    bwdtime) timeout ${BT_TIMEOUT:-200} python3 .device/exp/bwdtime.py ${BT_L:-2048} 2>&1 | tee /tmp/r/bwdtime.txt | tail -8 ;;
    pytest) timeout ${PT_TIMEOUT:-300} python3 -m pytest tests/attention/test_poc_cuda.py -q ${PT_ARGS:-} -p no:cacheprovider > /tmp/r/pytest.log 2>&1; tail -5 /tmp/r/pytest.log ;;
    attention) OUT=/tmp/r/attention timeout 400 bash scripts/gpu_suite.sh attention > /dev/null 2>&1; grep -E "poc|demo L=1000" /tmp/r/attention/attention.md | head -30 ;;
    compare) IMPLS=${IMPLS:-demo,poc,baseline,practical} REPEATS=1 OUT=/tmp/o timeout 500 bash scripts/gpu_suite.sh compare > /tmp/r/compare.log 2>&1; rm -rf /tmp/r/compare; mv /tmp/flashtune-compare /tmp/r/compare; tail -3 /tmp/r/compare.log ;;
  esac
  echo "[$stage $(( $(date +%s) - start )) s]"
done
tar czf $OUT/r.tgz -C /tmp r
