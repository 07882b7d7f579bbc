"""Trained imputers as MLflow models: a pyfunc flavour over the checkpoint (pyfunc_model.py: a dict of contrast
slices in, the imputed contrasts out), registered as `<dataset>-<experiment>`, and `models:/` URIs resolved back to it.

The best version on validation PSNR carries the alias `champion`, so `models:/<name>@champion` is the one to use.
"""

from __future__ import annotations

from pathlib import Path

RANKED_BY = {"stage2": "val/psnr_stage2", "direct": "val/psnr_direct"}  # what makes a version the champion
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def signature(contrasts: list[str], size: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    slices = Schema([TensorSpec(np.dtype(np.float32), (-1, size, size), name=c) for c in contrasts])
    params = ParamSchema([ParamSpec("missing", "string", [], shape=(-1,))])
    return ModelSignature(inputs=slices, outputs=slices, params=params)


def log_imputer(checkpoint: Path, name: str, kind: str, metrics: dict) -> str:
    """Log the checkpoint as an MLflow model in the active run, register it as `name` and move the `champion`
    alias to it if it beats the current champion on validation; returns the new version."""
    import mlflow
    from mlflow import MlflowClient

    from codebrain import __version__
    from codebrain.checkpoints import load_checkpoint
    from codebrain.io import scratch_folder, sha256sum

    payload = load_checkpoint(checkpoint, kind)
    size = (payload.get("stage1", payload).get("data") or payload.get("data") or {}).get("size", 64)
    # MLflow stages the model in temporary folders; beside the checkpoint, a killed job's are swept by its rerun
    with scratch_folder(Path(checkpoint).parent, f".{Path(checkpoint).name}.mlflow-", as_tempdir=True):
        info = mlflow.pyfunc.log_model(
            name="imputer", python_model=str(MODEL_CODE), artifacts={"checkpoint": str(checkpoint)},
            signature=signature(payload["model_config"]["contrasts"], size), registered_model_name=name,
            pip_requirements=[f"codebrain=={__version__}", f"torch=={__import__('torch').__version__}"],
            metadata={"kind": kind, "contrasts": payload["model_config"]["contrasts"]})
    client, version = MlflowClient(), str(info.registered_model_version)
    client.set_model_version_tag(name, version, "checkpoint.sha256", sha256sum(checkpoint))
    score = metrics.get(RANKED_BY[kind])
    if score is not None:
        client.set_model_version_tag(name, version, RANKED_BY[kind], str(score))
        try:
            champion = client.get_model_version_by_alias(name, "champion")
            best = float(champion.tags.get(RANKED_BY[kind], "-inf"))
        except mlflow.exceptions.MlflowException:
            best = float("-inf")
        if score > best:
            client.set_registered_model_alias(name, "champion", version)
    return version


def resolve_model(model: str) -> Path:
    """A checkpoint path as given, or the checkpoint inside a `models:/<name>/<version>` (or `@alias`) model of the
    tracking store (MLFLOW_TRACKING_URI)."""
    if not model.startswith("models:/"):
        return Path(model)
    import mlflow

    from codebrain.io import InputError

    try:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=model)
    except Exception as err:  # MLflow raises several types for an unknown name, version or alias
        raise InputError(f"--model {model}: not in the model registry of {mlflow.get_tracking_uri()} "
                         f"({err.__class__.__name__}: {str(err).splitlines()[0][:200]})") from err
    found = sorted(Path(folder).rglob("*.pt"))
    if not found:
        raise InputError(f"--model {model}: holds no checkpoint (not a CodeBrain model)")
    return found[0]


def scored_model_version(uri: str, checkpoint: Path, name: str) -> dict:
    """Tags that link an evaluation run to the registered version holding this checkpoint (matched by sha256);
    none when the checkpoint was never registered (a model trained outside the DAG) or the registry is unreachable."""
    from mlflow import MlflowClient

    from codebrain.io import sha256sum, store_errors

    try:
        versions = MlflowClient(uri).search_model_versions(f"name = '{name}'")
    except store_errors():  # the store is failing: the Tracker says so on its own calls
        return {}
    digest = sha256sum(checkpoint)
    for version in versions:
        if version.tags.get("checkpoint.sha256") == digest:
            return {"model.name": name, "model.version": version.version,
                    "model.uri": f"models:/{name}/{version.version}"}
    return {}
