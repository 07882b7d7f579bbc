"""Model checkpoints: every save and load of a trained network's payload (docs/design.md, "Checkpoints"; the
networks are rebuilt from it in codebrain/rebuild.py, so that saving needs none of them).

A checkpoint holds {kind, model, model_config, step, metrics, version, git_commit} and whatever
its kind adds (Stage II: its Stage I; every trained model: the slice store's summary): enough
to rebuild the network without the config files that made it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from codebrain.io import InputError, write_atomic
from codebrain.provenance import git_commit

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, kind: str, state_dict: dict, model_config, step: int, metrics: dict,
                    **extra) -> None:
    """model_config: the network's config dataclass (ModelConfig, SegmenterConfig), stored as a dict."""
    payload = {"kind": kind, "model": state_dict, "model_config": model_config.to_dict(), "step": step,
               "metrics": metrics, "version": CHECKPOINT_VERSION, "git_commit": git_commit(), **extra}
    with write_atomic(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)  # a file object: the archive's inner folder is not named after the temporary file


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
