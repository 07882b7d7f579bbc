"""Resume state: Accelerate's save_state folders beside a training rule's output, and the step counter in them.

Snakemake deletes the declared outputs of a failed job, so the state lives in the undeclared
<output>.state/, which a rerun of the same config finds and continues from.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Progress:
    """Saved with Accelerate's state so a resumed run knows where it stopped, what it has spent and the best
    weights so far: the step counter, training FLOPs (all processes) and wall seconds, and the weights with
    the best validation score (on the CPU; main process)."""
    step: int = 0
    flops: int = 0
    wall_s: float = 0.0
    best_step: int = 0
    best_metrics: dict = field(default_factory=dict)
    best_weights: dict | None = None

    def state_dict(self):
        return asdict(self)

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


class ResumeState:
    """<output>.state/checkpoint-<step> folders written by Accelerate, tagged with the config hash."""

    def __init__(self, output: Path, config_hash: str, keep: int = 2):
        self.dir = output.parent / f"{output.name}.state"
        self.config_hash, self.keep = config_hash, keep

    def checkpoints(self) -> list[Path]:
        return sorted(self.dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))

    def latest(self) -> Path | None:
        """Newest complete checkpoint of this config; state of another config is discarded (with a note)."""
        tag = self.dir / "config.json"
        if tag.exists() and json.loads(tag.read_text())["config_hash"] != self.config_hash:
            print(f"{self.dir}: resume state from another config, starting fresh")
            return None
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, accelerator, step: int) -> Path:
        """save_state into a temporary folder, renamed only when every process has written its part."""
        tmp, final = self.dir / f".checkpoint-{step}.tmp", self.dir / f"checkpoint-{step}"
        if accelerator.is_main_process:
            if self.latest() is None and self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps({"config_hash": self.config_hash}))
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            tmp.replace(final)
            for old in self.checkpoints()[:-self.keep]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def clear(self, accelerator) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and self.dir.exists():
            shutil.rmtree(self.dir)
