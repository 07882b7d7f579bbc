"""Model checkpoints (the rule's output) and Accelerate resume state (beside it, undeclared).

A checkpoint holds {kind, model, model_config, step, metrics, version, git_commit}: everything
needed to rebuild the network without the config files that made it. The resume state is
Accelerate's save_state folder: Snakemake deletes the declared outputs of a failed job, so the
state lives in <output>.state/, which a rerun finds and continues from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from codebrain.data.nifti import InputError, write_atomic
from codebrain.models.config import ModelConfig
from codebrain.tracking import git_commit

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, kind: str, state_dict: dict, model_config: ModelConfig, step: int,
                    metrics: dict, **extra) -> None:
    payload = {"kind": kind, "model": state_dict, "model_config": model_config.to_dict(), "step": step,
               "metrics": metrics, "version": CHECKPOINT_VERSION, "git_commit": git_commit(), **extra}
    with write_atomic(path) as tmp:
        torch.save(payload, tmp)


def config_mismatch(found: dict, expected: dict) -> list[str]:
    return [f"{key}: checkpoint has {found.get(key)!r}, expected {value!r}"
            for key, value in expected.items() if found.get(key) != value]


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...], expected: dict | None = None) -> dict:
    """The checkpoint at path, refused if it is not of `kind` (one or several) or its model_config differs from
    `expected`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise InputError(f"{path}: not a readable checkpoint ({err.__class__.__name__}: {err})") from err
    kinds = (kind,) if isinstance(kind, str) else kind
    if not isinstance(payload, dict) or payload.get("kind") not in kinds:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"{path}: is a {found!r} checkpoint, expected {' or '.join(map(repr, kinds))}")
    problems = config_mismatch(payload["model_config"], expected or {})
    if problems:
        raise InputError(f"{path}: checkpoint from another config: " + "; ".join(problems))
    return payload


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
