"""The MLflow pyfunc model of a trained imputer, logged as code by codebrain.registry.log_imputer (MLflow's
models-from-code: nothing pickled). predict({contrast: N x S x S float32 in [0, 1]}) -> {missing contrast: N x S x S};
a contrast is missing when its array is all zero (the zero filling the models were trained with) or named in
params["missing"]."""

from pathlib import Path

import mlflow
import numpy as np
import torch

CHECKPOINT = "checkpoint"  # the artefact key of the checkpoint inside the MLflow model


class ImputerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from codebrain.checkpoints import load_checkpoint
        from codebrain.evaluation.evaluate import load_imputer

        checkpoint = Path(context.artifacts[CHECKPOINT])
        self.imputer, self.method = load_imputer(checkpoint, None)
        self.contrasts = list(load_checkpoint(checkpoint, ("stage2", "direct"))["model_config"]["contrasts"])

    def predict(self, context, model_input, params=None):
        missing = list((params or {}).get("missing") or [c for c in self.contrasts if not np.any(model_input[c])])
        available = np.array([c not in missing for c in self.contrasts])
        image = torch.from_numpy(np.stack([np.asarray(model_input[c], np.float32) for c in self.contrasts], 1))
        imputed = self.imputer(image, available)[0][self.method].clamp(0, 1).numpy()  # N x C x S x S
        return {c: imputed[:, i] for i, c in enumerate(self.contrasts) if c in missing}


mlflow.models.set_model(ImputerModel())
