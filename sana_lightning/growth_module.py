"""`GrowthModule`: flow-matching training of a model grown from a smaller trained Sana (SANA 1.5 depth growth)."""

from lightning.pytorch.loggers import TensorBoardLogger

from sana_lightning.callbacks.block_norms import BlockUpdateNorms
from sana_lightning.module import SanaFlowModule


class GrowthModule(SanaFlowModule):
    """`SanaFlowModule` on `pretrained` grown by `growth` (both required), with a learning rate per block origin.

    Growth changes depth only: the target's widths are the source's, so `preset` (and `transformer` overrides) are
    optional and, when given, only checked against the source. `growth.target_layers` equal to the source's depth
    with `drop_last: 0` adds QK norm to a source without it (SANA's QK-norm adaptation, stage 1 of the 1.6B -> 4.8B
    recipe). `preserved_lr_scale` multiplies the learning rate of blocks that came from the source. Per-block update
    norms are logged every `log_block_norms_every_n_steps`.

    Args:
        preserved_lr_scale: Multiplies the learning rate of the blocks that came from the source.
        log_block_norms_every_n_steps: Steps between logs of each block's update norm.
        **kwargs: SanaFlowModule's arguments; pretrained and growth are required.
    """

    def __init__(self, preserved_lr_scale: float = 1.0, log_block_norms_every_n_steps: int = 50, **kwargs) -> None:
        if kwargs.get("growth") is None or not kwargs.get("pretrained"):
            raise ValueError("GrowthModule needs pretrained (the model to grow) and growth (how to grow it)")
        super().__init__(**kwargs)
        self.preserved_lr_scale = preserved_lr_scale
        self.log_block_norms_every_n_steps = log_block_norms_every_n_steps
        self.block_labels = ["new" if o is None else f"src{o}" for o in self.block_origins]

    def parameter_groups(self) -> list[dict]:
        blocks = self.transformer.transformer_blocks
        preserved = {id(p) for b, o in zip(blocks, self.block_origins) if o is not None for p in b.parameters()}
        params = list(self.transformer.parameters())
        groups = [
            {"params": [p for p in params if id(p) not in preserved]},
            {"params": [p for p in params if id(p) in preserved], "lr_scale": self.preserved_lr_scale},
        ]
        return [g for g in groups if g["params"]]

    def configure_callbacks(self):
        return [*super().configure_callbacks(), BlockUpdateNorms(self.log_block_norms_every_n_steps)]

    def on_fit_start(self) -> None:
        table = "\n".join(f"| {i} | {label} |" for i, label in enumerate(self.block_labels))
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("growth/blocks", "| block | origin |\n|---|---|\n" + table, self.global_step)
