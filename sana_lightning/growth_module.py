"""`GrowthModule`: flow-matching training of a model grown from a smaller trained Sana (SANA 1.5 depth growth)."""

from diffusers import SanaTransformer2DModel
from lightning.pytorch.loggers import TensorBoardLogger

from sana_lightning.callbacks.block_norms import BlockUpdateNorms
from sana_lightning.checkpoints import load_checkpoint_transformer
from sana_lightning.growth import GrowthConfig, grow
from sana_lightning.module import SanaFlowModule, _config
from sana_lightning.presets import preset_config

# Widths a grown model inherits from its source: they must match the target preset.
WIDTH_KEYS = (
    "num_attention_heads",
    "attention_head_dim",
    "num_cross_attention_heads",
    "cross_attention_head_dim",
    "cross_attention_dim",
    "mlp_ratio",
    "patch_size",
)


class GrowthModule(SanaFlowModule):
    """`SanaFlowModule` whose transformer is `source` grown by `growth` instead of a random preset.

    `source` is a sana-lightning checkpoint (a glob picks the newest match), a consolidated FSDP checkpoint or a
    diffusers directory; `source_weights` picks its EMA (default) or raw weights. The target preset (and its
    overrides) must have the source's widths. `preserved_lr_scale` multiplies the learning rate of blocks that came
    from the source. Per-block update norms are logged every `log_block_norms_every_n_steps`.
    """

    def __init__(
        self,
        source: str,
        growth: GrowthConfig | dict,
        source_weights: str = "ema",
        preserved_lr_scale: float = 1.0,
        log_block_norms_every_n_steps: int = 50,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)

    def _build_transformer(self, preset: str, overrides: dict, pretrained: str | None) -> SanaTransformer2DModel:
        source = load_checkpoint_transformer(self.hparams.source, self.hparams.source_weights)
        target = preset_config(preset, **{k: v for k, v in overrides.items() if k != "sample_size"})
        for key in WIDTH_KEYS:
            if source.config[key] != target[key]:
                raise ValueError(
                    f"source has {key}={source.config[key]} but the target ({preset}) has {key}={target[key]}"
                )
        self._check_io(source, f"source '{self.hparams.source}'")
        grown, origins = grow(source, _config(GrowthConfig, self.hparams.growth))
        self.block_origins = origins
        self.block_labels = ["new" if o is None else f"src{o}" for o in origins]
        return grown

    def parameter_groups(self) -> list[dict]:
        blocks = self.transformer.transformer_blocks
        preserved = {id(p) for b, o in zip(blocks, self.block_origins) if o is not None for p in b.parameters()}
        params = list(self.transformer.parameters())
        groups = [
            {"params": [p for p in params if id(p) not in preserved]},
            {"params": [p for p in params if id(p) in preserved], "lr_scale": self.hparams.preserved_lr_scale},
        ]
        return [g for g in groups if g["params"]]

    def configure_callbacks(self):
        return [BlockUpdateNorms(self.hparams.log_block_norms_every_n_steps)]

    def on_fit_start(self) -> None:
        table = "\n".join(f"| {i} | {label} |" for i, label in enumerate(self.block_labels))
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("growth/blocks", "| block | origin |\n|---|---|\n" + table, self.global_step)
