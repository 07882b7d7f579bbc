#!/usr/bin/env bash
# Issue 27's prepared GPU session: Stage I and II at the paper size in four variants (eager bf16, the memory path,
# regional compile, CUDA graphs), each with its samples/s, TFLOP/s, peak GiB and numerical check, then the memory
# accounting on the device. Budget: under 8 minutes on an H100/H200: each eager (stage, variant) is cut at EAGER_S
# seconds, each compiled one at COMPILE_S, the accounting at 45 s (at most 465 s in all). Issue 17's session (the bf16
# check and the real-slice training path) is this file at commit 2242324.
#   bash bench/gpu_session.sh                                   # on the GPU machine; JSON under $OUT
#   MODEL=tiny SIZE=32 BATCH=2 VARIANTS="fp32 fp32+regional_compile" bash bench/gpu_session.sh   # a CPU try-out
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-session}
MODEL=${MODEL:-config/models/paper.yaml}
SIZE=${SIZE:-256}
BATCH=${BATCH:-48}
STEPS=${STEPS:-6}
EAGER_S=${EAGER_S:-40}
COMPILE_S=${COMPILE_S:-65}
VARIANTS=${VARIANTS:-bf16 bf16+channels_last+expansions+bf16_residual bf16+channels_last+elementwise+regional_compile bf16+channels_last+elementwise+cuda_graphs}
mkdir -p "$OUT/variants"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" \
    | tee "$OUT/device.txt"
for variant in $VARIANTS; do
    for stage in stage1 stage2; do
        # one process per (stage, variant): an out-of-memory or a slow compile costs only its own row
        limit=$EAGER_S
        [[ $variant == *compile* || $variant == *cuda_graphs* ]] && limit=$COMPILE_S
        timeout "$limit" python bench/bench_training.py --model "$MODEL" --size "$SIZE" --batch "$BATCH" \
            --steps "$STEPS" --warmup 2 --stages "$stage" --variants "$variant" \
            --out "$OUT/variants/$stage-$variant.json" || echo "$stage $variant: stopped (exit $?)"
    done
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
records = [json.loads(p.read_text()) for p in sorted((out / "variants").glob("*.json"))]
rows = [row for record in records for row in record["rows"]]
summary = {**({k: v for k, v in records[0].items() if k != "rows"} if records else {}), "rows": rows}
(out / "training.json").write_text(json.dumps(summary, indent=1))
print(f"{len(rows)} rows in {out / 'training.json'}")
PY
if python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    timeout 45 python bench/bench_memory.py --device cuda --model "$MODEL" --size 64 --batch 2 \
        --recompute none elementwise --out "$OUT/memory-cuda.json" || echo "memory accounting: stopped (exit $?)"
fi
