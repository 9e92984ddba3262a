"""Command line: `python -m sana_lightning.cli fit|validate|test|predict --config ...` plus data commands.

Lightning subcommands come from `LightningCLI` (sweeps: stack `--config` files and `--x.y=value` overrides);
the others (`shapes`, `shards`, `grow`) are plain functions whose typed signatures make their options.
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

from jsonargparse import CLI
from lightning.pytorch.cli import LightningCLI

from sana_lightning.checkpoints import load_checkpoint_transformer
from sana_lightning.data.folder_shards import write_folder_shards
from sana_lightning.data.shapes import write_shapes_dataset
from sana_lightning.growth import GrowthConfig, Strategy, grow



def grow_checkpoint(
    source: str,
    out_dir: str,
    target_layers: int,
    strategy: Strategy = "partial_preservation",
    drop_last: int = 2,
    zero_new: bool = True,
    qk_norm: str | None = "rms_norm_across_heads",
    source_weights: str = "ema",
) -> Path:
    """Grow a checkpoint (or diffusers directory) without training; write a diffusers directory plus `growth.json`."""
    config = GrowthConfig(target_layers, strategy, drop_last, zero_new, qk_norm)
    grown, origins = grow(load_checkpoint_transformer(source, source_weights), config)
    out = Path(out_dir)
    grown.save_pretrained(out)
    (out / "growth.json").write_text(json.dumps({"source": source, **asdict(config), "block_origins": origins}, indent=2))
    print(f"grown {len(origins) - origins.count(None)} source blocks + {origins.count(None)} new -> {out}")
    return out


COMMANDS = {
    "shapes": write_shapes_dataset,
    "shards": write_folder_shards,
    "grow": grow_checkpoint,
}


class SanaCLI(LightningCLI):
    """LightningCLI with OmegaConf interpolation in configs and TensorBoard logging by default."""

    def __init__(self, args=None, run: bool = True) -> None:
        super().__init__(
            args=args,
            run=run,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            parser_kwargs={"parser_mode": "omegaconf"},
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "sana", "default_hp_metric": False},
                }
            },
            save_config_kwargs={"overwrite": True},
        )


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    if args and args[0] in COMMANDS:
        CLI(COMMANDS, args=args)
        return
    if args[:1] in (["-h"], ["--help"]):
        print(f"data commands: {', '.join(COMMANDS)} (each takes --help)\n")
    SanaCLI(args=args)


if __name__ == "__main__":
    main()
