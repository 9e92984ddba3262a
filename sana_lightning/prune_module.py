"""`PruneRecoveryModule`: fine-tune a depth-pruned Sana, optionally distilling from the unpruned teacher."""

from dataclasses import replace

import torch
import torch.nn.functional as F

from sana_lightning.factory import TransformerSource, resolve_on_meta, resolve_transformer
from sana_lightning.flow import flow_loss
from sana_lightning.module import SanaFlowModule
from sana_lightning.sharding import is_sharded, mesh_device, shard_transformer


class PruneRecoveryModule(SanaFlowModule):
    """Flow-matching fine-tuning of the pruned model at `pretrained` (the diffusers directory the `prune` command
    writes, or any checkpoint). With `teacher` and `distill_weight` > 0 the loss adds
    `distill_weight * MSE(student velocity, teacher velocity)` on the same noisy inputs; the teacher is frozen and
    not stored in checkpoints. SANA 1.5 recovers with about 100 steps. Under FSDP2 the teacher is sharded like the
    student (per block, then the whole model; its weights gathered block by block in its forward and freed after), so
    each rank holds 1/N of it and no optimizer state or gradients.

    Args:
        teacher: The unpruned checkpoint to distil from (with distill_weight > 0).
        distill_weight: Weight of the distillation loss (0: plain fine-tuning).
        **kwargs: SanaFlowModule's arguments; pretrained (the pruned model) is required.
    """

    frozen_prefixes = (*SanaFlowModule.frozen_prefixes, "teacher.")

    def __init__(self, teacher: str | None = None, distill_weight: float = 0.0, **kwargs) -> None:
        if not kwargs.get("pretrained"):
            raise ValueError("PruneRecoveryModule needs pretrained: the pruned model (the prune command's out_dir)")
        if (distill_weight > 0) != bool(teacher):
            raise ValueError(
                f"distillation needs both a teacher (the unpruned checkpoint) and distill_weight > 0, got "
                f"teacher={teacher!r}, distill_weight={distill_weight}: give both or neither"
            )
        super().__init__(**kwargs)
        self.distill_weight = distill_weight
        self.teacher = self.teacher_weights = None  # with meta_init: the teacher is filled after sharding too
        if teacher and self.sharding.meta_init:
            self.teacher, _, self.teacher_weights = resolve_on_meta(
                TransformerSource(pretrained=teacher), self.io_channels()
            )
        elif teacher:
            self.teacher, _ = resolve_transformer(TransformerSource(pretrained=teacher), self.io_channels())
        if self.teacher is not None:
            self.teacher.eval().requires_grad_(False)

    def configure_model(self) -> None:
        """The student (and EMA) sharded by `SanaFlowModule`, then the frozen teacher over the same mesh (and, with
        `sharding.meta_init`, each rank's shard of it read from its source)."""
        super().configure_model()
        if self.teacher is None:
            return
        mesh = None if self.device_mesh is None else self.device_mesh["data_parallel"]
        if mesh is not None and not is_sharded(self.teacher):
            # No activations to keep (it runs under no_grad): reshard after each block's forward, never recompute.
            options = replace(self.sharding, activation_checkpointing=False, reshard_after_forward=True)
            shard_transformer(self.teacher, mesh, options)
        if self.teacher_weights is not None and next(self.teacher.parameters()).is_meta:
            self.teacher_weights.materialize(self.teacher, mesh_device(mesh))

    def flow_step(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        inputs = self.flow_inputs(batch, generator)
        prediction = self.prediction(self.transformer, inputs)
        loss = flow_loss(prediction, inputs["x0"], inputs["noise"])
        if self.teacher is None:
            return loss
        with torch.no_grad():
            target = self.prediction(self.teacher, inputs)
        distill = F.mse_loss(prediction.float(), target.float())
        self.log("train/distill", distill, batch_size=len(prediction))
        return loss + self.distill_weight * distill
