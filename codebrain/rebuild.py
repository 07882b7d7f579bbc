"""Trained networks rebuilt from their checkpoints, each from the model_config it was saved with."""

from __future__ import annotations

from pathlib import Path

from codebrain.checkpoints import load_checkpoint
from codebrain.models.config import ModelConfig
from codebrain.models.direct import DirectRegressor
from codebrain.models.prior import CodePrior
from codebrain.models.reconstructor import Reconstructor
from codebrain.models.segmenter import SegmenterConfig, build_segmenter


def _contrasts(contrasts: list[str] | None) -> dict | None:
    return {"contrasts": list(contrasts)} if contrasts else None


def _rebuild(network, model_config: dict, state_dict: dict):
    model = network(ModelConfig.from_dict(model_config))
    model.load_state_dict(state_dict)
    return model.eval()


def load_stage1(path: str | Path, contrasts: list[str] | None = None) -> tuple[Reconstructor, dict]:
    """Stage I rebuilt from its checkpoint's own model_config (refused if trained on other contrasts)."""
    payload = load_checkpoint(path, "stage1", _contrasts(contrasts))
    return _rebuild(Reconstructor, payload["model_config"], payload["model"]), payload


def codebrain_from(payload: dict) -> tuple[Reconstructor, CodePrior, dict]:
    """(Stage I, E_prior, the training store's summary) from a loaded Stage II checkpoint."""
    stage1 = _rebuild(Reconstructor, payload["stage1"]["model_config"], payload["stage1"]["model"])
    prior = _rebuild(CodePrior, payload["model_config"], payload["model"])
    return stage1, prior, payload["stage1"].get("data", {})


def load_codebrain(path: str | Path, contrasts: list[str] | None = None) -> tuple[Reconstructor, CodePrior, dict]:
    """Stage I, E_prior and the training store's summary (size, slicing) from a Stage II checkpoint."""
    return codebrain_from(load_checkpoint(path, "stage2", _contrasts(contrasts)))


def direct_from(payload: dict) -> DirectRegressor:
    return _rebuild(DirectRegressor, payload["model_config"], payload["model"])


def load_segmenter(path: str | Path, contrasts: list[str]):
    payload = load_checkpoint(path, "segmenter", _contrasts(contrasts))
    model = build_segmenter(SegmenterConfig.model_validate(payload["model_config"]))
    model.load_state_dict(payload["model"])
    return model.eval()
