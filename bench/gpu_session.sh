#!/usr/bin/env bash
# The one prepared GPU run of issue 17 (about 8 minutes on an H100/H200), from the repository root:
#   bash bench/gpu_session.sh            # results under $OUT (default bench/gpu-out)
# Needs .gpu/store.tgz: a slice store of real BraTS 2018 cases at 1 mm, 192 x 192 (240 training slices;
# made with codebrain.data.slices from ../shared/realdata/brats2018, see BENCHMARKS.md). Every step has its own
# time limit and appends to session.log, so a step that runs long loses only itself.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/bench
OUT=${OUT:-bench/gpu-out}
mkdir -p "$OUT" /tmp/codebrain-store
log="$OUT/session.log"
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'accelerate', accelerate.__version__)"
} 2>&1 | tee "$log"
tar xzf .gpu/store.tgz -C /tmp/codebrain-store

echo "== 1. bf16 against fp32, paper model, 256 x 256, batch 8" | tee -a "$log"
timeout 80 python3 bench/check_bf16.py --no-compile --out "$OUT/bf16-check.json" 2>&1 | grep -v Warning | tee -a "$log"
echo "== 1b. bf16 + channels_last + torch.compile against fp32, tiny model (compile numerics)" | tee -a "$log"
timeout 100 python3 bench/check_bf16.py --model tiny --size 64 --batch 8 --out "$OUT/bf16-compile-check.json" 2>&1 \
  | grep -v Warning | tee -a "$log"
echo "== 2. real 1 mm slices, both stages through StageOne/StageTwo (Accelerate bf16), then imputation" | tee -a "$log"
timeout 150 python3 bench/gpu_real_training.py --store /tmp/codebrain-store --seconds 35 \
  --out "$OUT/real-training.json" 2>&1 | grep -v "Warning\|warn" | tee -a "$log"
echo "== 3. training-step variants, paper model, 256 x 256, batch 48" | tee -a "$log"
timeout 230 python3 bench/bench_training.py --steps 8 --warmup 2 \
  --variants fp32 bf16 bf16+channels_last bf16+channels_last+compile --profile bf16+channels_last \
  --profile-out "$OUT/profile.txt" --out "$OUT/training.json" 2>&1 | grep -v "Warning\|USDT" | tee -a "$log"
date | tee -a "$log"
