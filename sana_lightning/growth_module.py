"""`GrowthModule`: flow-matching training of a model grown from a smaller trained Sana (SANA 1.5 depth growth)."""

from diffusers import SanaTransformer2DModel
from lightning.pytorch.loggers import TensorBoardLogger

from sana_lightning.callbacks.block_norms import BlockUpdateNorms
from sana_lightning.checkpoints import load_checkpoint_transformer
from sana_lightning.growth import GrowthConfig, grow
from sana_lightning.module import SanaFlowModule, _config
from sana_lightning.presets import preset_config

# Set by growth (`target_layers`, `qk_norm`) or by the data (`sample_size`), never taken from the source.
GROWN_KEYS = ("num_layers", "qk_norm", "sample_size")


class GrowthModule(SanaFlowModule):
    """`SanaFlowModule` whose transformer is `source` grown by `growth` instead of a random preset.

    `source` is a sana-lightning checkpoint (a glob picks the newest match), a consolidated FSDP checkpoint or a
    diffusers directory; `source_weights` picks its EMA (default) or raw weights. Growth changes depth only: the
    target's widths are the source's, so `preset` (and `transformer` overrides) are optional and, when given, only
    checked once against the source. `growth.target_layers` equal to the source's depth with `drop_last: 0` adds QK
    norm to a source without it (SANA's QK-norm adaptation, stage 1 of the 1.6B -> 4.8B recipe).
    `preserved_lr_scale` multiplies the learning rate of blocks that came from the source. Per-block update norms
    are logged every `log_block_norms_every_n_steps`.
    """

    def __init__(
        self,
        source: str,
        growth: GrowthConfig | dict,
        source_weights: str = "ema",
        preserved_lr_scale: float = 1.0,
        log_block_norms_every_n_steps: int = 50,
        preset: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(preset=preset, **kwargs)

    def _build_transformer(self, preset: str | None, overrides: dict, pretrained: str | None) -> SanaTransformer2DModel:
        source = load_checkpoint_transformer(self.hparams.source, self.hparams.source_weights)
        self._check_io(source, f"source '{self.hparams.source}'")
        expected = preset_config(preset, **overrides) if preset else overrides
        ignored = (*GROWN_KEYS, *self._io_channels())  # the codecs' widths are checked by _check_io
        conflicts = [
            f"{k}={source.config.get(k)} (target {v})"
            for k, v in expected.items()
            if k not in ignored and source.config.get(k) != v
        ]
        if conflicts:
            raise ValueError(
                f"growth takes the target's widths from the source, which differs from preset={preset!r} / "
                f"transformer overrides in {', '.join(conflicts)}: drop them from the growth config"
            )
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
