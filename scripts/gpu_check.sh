#!/usr/bin/env bash
# The prepared device check: ONE command, at most 8 minutes on a CUDA machine, that measures
# what a CPU cannot (docs/benchmarks.md, "Device check") and writes every figure as JSON:
#
#   bash scripts/gpu_check.sh [OUT]                    # on a GPU; OUT defaults to docs/results
#   DCLNET_GPU_CHECK_TINY=1 bash scripts/gpu_check.sh OUT   # tiny sizes on the CPU (a test)
#
# Phases (each under its own time budget; one that fails or runs out is recorded and the
# next one still runs):
#   tests      the CUDA-only tests (pytest -m gpu)                        -> gpu_check_tests.json
#   benchmark  dclnet benchmark --device cuda --size real: fp32/bf16 steps, full/plain
#              ratio, peak memory, dense loss per product precision and its share of the
#              step                                                       -> bench_gpu_real.json
#   ddp        2-process NCCL torchrun of the tiny recipe (needs 2 GPUs)  -> gpu_check_ddp.json
#   paper      ResNet-50 at 288 x 144 from a quick synthetic pretraining, one short epoch,
#              then dclnet diagnose             -> gpu_check_train.json, gpu_check_diagnose.json
#   summary    mode, device, each phase's status and seconds             -> gpu_check.json
# The tiny mode runs the same phases at tiny sizes on the CPU (no NCCL phase, the benchmark's
# train and dense sections only) and needs an explicit OUT, so that it never overwrites the
# GPU figures in docs/results. Exit status 1 when a phase failed or ran out of time.
set -uo pipefail

tiny=${DCLNET_GPU_CHECK_TINY:-0}
if [ "$tiny" = 1 ] && [ $# -lt 1 ]; then
  echo "gpu_check.sh: DCLNET_GPU_CHECK_TINY=1 needs an output folder argument" >&2
  exit 2
fi
out=${1:-docs/results}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
phases="$work/phases.tsv"
: >"$phases"
py=${PYTHON:-python}

if [ "$tiny" = 1 ]; then
  # 8 synthetic people (6 train identities, ~100 visible images): 5 steps of 6 x 4 pairs
  device=cpu size=tiny arch=resnet18 height=64 width=32 pretrain_steps=1 synthetic_ids=8
  pretrain_ids=8 batch="data.num_ids=6 data.num_instances=4" trials=1 sections="--only train --only dense"
  scale=3  # time budgets: a (possibly shared) CPU, no 8-minute limit
else
  if ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check.sh: no CUDA device; run with DCLNET_GPU_CHECK_TINY=1 OUT on a CPU" >&2
    exit 2
  fi
  device=cuda size=real arch=resnet50 height=288 width=144 pretrain_steps=150 synthetic_ids=64
  pretrain_ids=128 batch="data.num_ids=8 data.num_instances=4" trials=2 sections=""
  scale=1  # budgets 60 + 170 + 60 + 130 + 55 s: 8 minutes at most
fi

mkdir -p "$out"

# phase NAME BUDGET_S COMMAND...: run with a time limit, log to $work/NAME.log, record
# "NAME<TAB>status<TAB>seconds" (status: ok, failed (rc N), timed out after N s).
phase() {
  local name=$1 budget=$2
  shift 2
  echo "== $name (at most ${budget} s): $*"
  local start=$SECONDS rc=0
  timeout --signal=INT --kill-after=20 "$budget" "$@" >"$work/$name.log" 2>&1 || rc=$?
  tail -n 25 "$work/$name.log"
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="timed out after $budget s"
  elif [ "$rc" -ne 0 ]; then
    status="failed (rc $rc)"
  fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >>"$phases"
  echo "== $name: $status"
}

# 1. the CUDA-only tests (on a CPU they skip: the phase checks they are collected)
gpu_tests=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
phase tests $((60 * scale)) "$py" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$work/tests.xml" $gpu_tests
"$py" - "$work/tests.xml" "$out/gpu_check_tests.json" "$gpu_tests" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from dclnet.evaluation.protocols import write_json

xml, dest, files = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split()
cases = []
if xml.is_file():
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error"}.get(tag, "skipped")
                reason = (node.get("message") or "").splitlines()[:1]
                break
        else:
            reason = []
        name = f"{case.get('classname')}::{case.get('name')}"
        cases.append({"test": name, "outcome": outcome, "reason": "".join(reason)})
counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
write_json({"command": "pytest -m gpu " + " ".join(files), **counts, "tests": cases}, dest)
PY

# 2. the benchmark suite at the paper's size (tiny on a CPU)
# shellcheck disable=SC2086
phase benchmark $((170 * scale)) "$py" -m dclnet benchmark --device "$device" --size "$size" $sections \
  --json "$out/bench_gpu_$size.json"

# 3. two-process NCCL training of the tiny recipe
ngpu=$("$py" -c "import torch; print(torch.cuda.device_count())")
if [ "$device" = cuda ] && [ "$ngpu" -ge 2 ]; then
  phase ddp 60 "$py" -m torch.distributed.run --standalone --nproc_per_node 2 -m dclnet train \
    --config tiny --output "$work/ddp" train.device=cuda optim.epochs=1 eval.trials=1
  cp "$work/ddp/test_results.json" "$out/gpu_check_ddp.json" 2>/dev/null || true
else
  msg="skipped: $ngpu CUDA device(s), the NCCL run needs 2"
  echo "== ddp: $msg"
  printf 'ddp\t%s\t0\n' "$msg" >>"$phases"
fi

# 4. paper-size network from a quick synthetic pretraining, one short epoch, diagnose
# shellcheck disable=SC2086
phase paper $((130 * scale)) "$py" -m dclnet train --output "$work/paper" \
  data.dataset=synthetic data.height=$height data.width=$width data.synthetic_ids=$synthetic_ids \
  data.cache_dir="$work/cache" $batch model.arch=$arch model.pretrained=synthetic \
  model.pretrain_steps=$pretrain_steps model.pretrain_ids=$pretrain_ids optim.epochs=1 \
  optim.warmup_epochs=0 optim.milestones=[1] train.device=$device train.log_every=5 \
  eval.trials=$trials
if [ -f "$work/paper/last.pt" ]; then
  cp "$work/paper/test_results.json" "$out/gpu_check_train.json" 2>/dev/null || true
  phase diagnose $((55 * scale)) "$py" -m dclnet diagnose --checkpoint "$work/paper/last.pt" \
    --device "$device" --json "$out/gpu_check_diagnose.json"
else
  printf 'diagnose\tskipped: no checkpoint from the paper phase\t0\n' >>"$phases"
fi

# 5. the summary
"$py" - "$phases" "$out/gpu_check.json" "$tiny" "$device" gpu_check_tests.json \
  "bench_gpu_$size.json" gpu_check_ddp.json gpu_check_train.json gpu_check_diagnose.json <<'PY'
import sys
from pathlib import Path

import torch

from dclnet.bench.common import machine
from dclnet.evaluation.protocols import write_json

phases, dest, tiny, device = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
rows = []
for line in Path(phases).read_text().splitlines():
    name, status, seconds = line.split("\t")
    rows.append({"phase": name, "status": status, "seconds": int(seconds)})
record = {
    "command": ("DCLNET_GPU_CHECK_TINY=1 " if tiny else "") + "bash scripts/gpu_check.sh",
    "mode": "tiny (CPU)" if tiny else "device",
    "hardware": machine(torch.device(device)),
    "phases": rows,
    "files": [p for p in sys.argv[5:] if (Path(dest).parent / p).is_file()],
}
write_json(record, dest)
print("\n".join(f"{r['phase']:10s} {r['status']:40s} {r['seconds']:5d} s" for r in rows))
PY
echo "wrote $out/gpu_check.json"
# The exit status: 1 when a phase failed or timed out (skips are fine).
if grep -qE $'\t(failed|timed out)' "$phases"; then
  exit 1
fi
