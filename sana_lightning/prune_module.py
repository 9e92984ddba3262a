"""`PruneRecoveryModule`: fine-tune a depth-pruned Sana, optionally distilling from the unpruned teacher."""

import torch
import torch.nn.functional as F
from diffusers import SanaTransformer2DModel

from sana_lightning.checkpoints import load_checkpoint_transformer
from sana_lightning.flow import flow_loss
from sana_lightning.module import SanaFlowModule


class PruneRecoveryModule(SanaFlowModule):
    """Flow-matching fine-tuning of the pruned transformer at `pruned` (written by the `prune` command, or any
    checkpoint / diffusers directory). With `teacher` and `distill_weight` > 0 the loss adds
    `distill_weight * MSE(student velocity, teacher velocity)` on the same noisy inputs; the teacher is frozen and
    not stored in checkpoints. SANA 1.5 recovers with about 100 steps."""

    frozen_prefixes = (*SanaFlowModule.frozen_prefixes, "teacher.")

    def __init__(self, pruned: str, teacher: str | None = None, distill_weight: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.teacher = None
        if teacher and distill_weight > 0:
            self.teacher = load_checkpoint_transformer(teacher).eval().requires_grad_(False)
            self._check_io(self.teacher, f"teacher '{teacher}'")

    def _build_transformer(self, preset: str, overrides: dict, pretrained: str | None) -> SanaTransformer2DModel:
        model = load_checkpoint_transformer(self.hparams.pruned)
        self._check_io(model, f"pruned model '{self.hparams.pruned}'")
        return model

    def flow_step(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        inputs = self.flow_inputs(batch, generator)
        args = inputs["noisy"], inputs["sigmas"], inputs["embeds"], inputs["mask"]
        prediction = self.velocity(self.transformer, *args)
        loss = flow_loss(prediction, inputs["x0"], inputs["noise"])
        if self.teacher is None:
            return loss
        with torch.no_grad():
            target = self.velocity(self.teacher, *args)
        distill = F.mse_loss(prediction.float(), target.float())
        self.log("train/distill", distill, batch_size=len(prediction))
        return loss + self.hparams.distill_weight * distill
