"""The training loop's NaN guard: a diverged run stops on every process together, naming the first bad step and
the last good checkpoint, without a host synchronisation per step."""

from __future__ import annotations

import torch

from codebrain.training.resume import ResumeState


class TrainingDiverged(RuntimeError):
    pass


class NonFiniteGuard:
    """Watches every loss for NaN/inf without a host synchronisation per step: a step's call only records, on
    the device, the step at which each loss first went non-finite and its value then; `check`, at the loop's
    sync points (logging, validation, checkpoints), stops every process together, naming the first such step.
    Weights updated after it are never validated or saved, since every sync point checks first."""

    def __init__(self, accelerator, state: ResumeState):
        self.accelerator, self.state = accelerator, state
        self.first_bad: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # loss -> (step + 1 or 0, value then)

    def __call__(self, losses: dict, step: int) -> None:
        for name, value in losses.items():
            value = value.detach()
            step_then, value_then = self.first_bad.get(
                name, (torch.zeros((), dtype=torch.long, device=value.device), torch.zeros_like(value)))
            first = (step_then == 0) & ~torch.isfinite(value).all()
            self.first_bad[name] = torch.where(first, step + 1, step_then), torch.where(first, value, value_then)

    def check(self) -> None:
        never = torch.iinfo(torch.long).max
        steps = [torch.where(s > 0, s, never) for s, _ in self.first_bad.values()]
        here = torch.stack(steps).min() if steps else torch.tensor(never)
        step = int(self.accelerator.gather(here.to(self.accelerator.device)[None]).min())  # over processes
        if step != never:
            values = {name: float(v) for name, (s, v) in self.first_bad.items() if int(s) == step}
            raise TrainingDiverged(f"non-finite loss at step {step}: {values}; last good checkpoint: "
                                   f"{self.state.latest() or 'none (no checkpoint written yet)'}")
