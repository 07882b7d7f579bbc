"""Both training stages for a fixed time on real slices, through the training code's own stage classes
(StageOne, StageTwo: Accelerate with bf16 on a GPU) and its data path (SliceDataset, GlobalBatches,
epoch_loader, batch_scenario), without MLflow, validation or checkpoints; then the imputation of 80
real slices in every scenario.

    python bench/gpu_real_training.py --store STORE_DIR --seconds 45    # a GPU, the paper model
    python bench/gpu_real_training.py --store STORE_DIR --model tiny --batch 4 --seconds 5

Per stage: samples/s over the timed steps (the first `--warmup` are not timed), the loader's share
(wall time the training process spent blocked waiting for the next batch), and the mean GPU
utilisation sampled every 0.1 s (NVML). Writes --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench_training import model_section
from codebrain.data.dataset import SliceDataset, open_store
from codebrain.evaluation.scenarios import CodeBrainImputer, all_scenarios
from codebrain.training.config import Experiment
from codebrain.training.loop import GlobalBatches, TrainingBatch, batch_scenario, epoch_loader, make_accelerator
from codebrain.training.stage1 import StageOne
from codebrain.training.stage2 import StageTwo


class Utilisation:
    """Mean GPU utilisation (%) between start() and stop(), sampled by NVML in a thread."""

    def __init__(self):
        self.samples, self.running, self.handle = [], False, None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle, self.nvml = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml
        except Exception:  # no NVIDIA driver (a CPU run): utilisation is not measured
            pass

    def _sample(self):
        while self.running:
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(0.1)

    def start(self):
        if self.handle is not None:
            self.running, self.samples = True, []
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()

    def stop(self) -> float | None:
        if self.handle is None:
            return None
        self.running = False
        self.thread.join()
        return float(np.mean(self.samples)) if self.samples else None


def train_for(stage, dataset, seconds: float, warmup: int, device, utilisation: Utilisation) -> dict:
    cfg, n = stage.cfg, len(stage.model_config.contrasts)
    batches = GlobalBatches(len(dataset), cfg.batch_size, cfg.seed, 0, 1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step, waited, timed_steps, started, losses = 0, 0.0, 0, None, {}
    while started is None or time.perf_counter() - started < seconds:
        _, loader = epoch_loader(dataset, batches, step, cfg.num_workers)
        iterator = iter(loader)
        while True:
            asked = time.perf_counter()
            batch = next(iterator, None)
            if started is not None:
                waited += time.perf_counter() - asked
            if batch is None:
                break
            mask, anchor = batch_scenario(batch, cfg, step, n)
            codes = batch["codes"].to(device) if "codes" in batch else None
            inputs = TrainingBatch(batch["image"].to(device).float(), mask.to(device), anchor.to(device), codes, step)
            losses = stage.train_step(inputs, lambda found: None)
            step += 1
            if step == warmup:
                sync()
                started = time.perf_counter()
                utilisation.start()
            elif started is not None:
                timed_steps += 1
                if time.perf_counter() - started >= seconds:
                    break
    sync()
    elapsed = time.perf_counter() - started
    return {"stage": stage.name, "steps": timed_steps, "seconds": elapsed,
            "samples_per_s": timed_steps * cfg.batch_size / elapsed, "loader_share": waited / elapsed,
            "gpu_utilisation_pct": utilisation.stop(), "num_workers": cfg.num_workers,
            "last_losses": {k: float(v.detach()) for k, v in losses.items()},
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


@torch.no_grad()
def cache_codes(model, store: Path, contrasts, codes_dir: Path, device) -> None:
    """Stage I's codes of every training slice, as the code cache holds them (cache_codes.py)."""
    slices, _ = open_store(store, "train", contrasts)
    codes = [model.encode(torch.from_numpy(np.asarray(slices[i: i + 32], np.float32)).to(device)).cpu().numpy()
             for i in range(0, len(slices), 32)]
    np.save(codes_dir / "train.npy", np.concatenate(codes).astype(model.quantiser.code_dtype))


@torch.no_grad()
def time_imputation(stage1, prior, store: Path, contrasts, n_slices: int, device) -> dict:
    slices, _ = open_store(store, "train", contrasts)
    image = torch.from_numpy(np.asarray(slices[:n_slices], np.float32)).to(device)
    imputer = CodeBrainImputer(stage1.eval(), prior.eval(), reconstruct=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    imputer(image[:2], all_scenarios(len(contrasts))[0])  # warm-up
    sync()
    started = time.perf_counter()
    with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for available in all_scenarios(len(contrasts)):
            for batch in image.split(40):
                imputer(batch, available)
    sync()
    return {"slices": len(image), "scenarios": len(all_scenarios(len(contrasts))),
            "seconds": time.perf_counter() - started, "size": image.shape[-1]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a slice store folder (train split)")
    parser.add_argument("--model", default="config/models/paper.yaml", help="a model YAML, or 'tiny'")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=45)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--impute-slices", type=int, default=80)
    parser.add_argument("--out", default="bench/real-training.json")
    args = parser.parse_args(argv)
    store = Path(args.store)
    contrasts = json.loads((store / "store.json").read_text())["contrasts"]
    schedule = {"steps": 10**6, "batch_size": args.batch, "num_workers": args.num_workers}
    experiment = Experiment.from_dict({"protocol": "paper", "model": model_section(args.model),
                                       "stage1": schedule, "stage2": schedule}, contrasts)
    accelerator = make_accelerator()
    device, utilisation = accelerator.device, Utilisation()
    record = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "model": args.model, "batch": args.batch, "mixed_precision": accelerator.mixed_precision, "rows": []}

    stage1 = StageOne(experiment, accelerator)
    dataset = SliceDataset(store, "train", contrasts, seed=0)
    record["store"] = {"slices": len(dataset), "size": dataset.summary["size"],
                       "voxel_size": dataset.summary.get("voxel_size")}
    record["rows"].append(train_for(stage1, dataset, args.seconds, args.warmup, device, utilisation))
    print(json.dumps(record["rows"][-1]), flush=True)

    model = accelerator.unwrap_model(stage1.model)
    with tempfile.TemporaryDirectory() as codes_dir:
        cache_codes(model, store, contrasts, Path(codes_dir), device)
        stage2 = StageTwo(experiment, accelerator, model, experiment.model)
        coded = SliceDataset(store, "train", contrasts, seed=0, codes_dir=codes_dir)
        record["rows"].append(train_for(stage2, coded, args.seconds, args.warmup, device, utilisation))
        print(json.dumps(record["rows"][-1]), flush=True)
    record["imputation"] = time_imputation(model, accelerator.unwrap_model(stage2.model), store, contrasts,
                                           args.impute_slices, device)
    print(json.dumps(record["imputation"]), flush=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
