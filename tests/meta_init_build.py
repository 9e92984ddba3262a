"""Build a grown tiny Sana with `sharding.meta_init` through Lightning, on 1 process or FSDP2-sharded over N CPU
processes (gloo), and save its full weights (transformer and EMA) as rank 0 gathers them.

    python tests/meta_init_build.py SOURCE OUT_FILE --devices 2
"""

import argparse

import lightning as L
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from sana_lightning.growth_module import GrowthModule
from sana_lightning.sharding import FSDP2Strategy


class BuildOnly(GrowthModule):
    def validation_step(self, batch, batch_idx) -> None:
        pass

    def on_validation_end(self) -> None:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = {name: get_model_state_dict(model, options=options) for name, model in self.transformers().items()}
        if self.global_rank == 0:
            torch.save(weights, self.out_file)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source")
    parser.add_argument("out_file")
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    module = BuildOnly(
        pretrained=args.source,
        growth={"target_layers": 6},
        preset="tiny",
        text_encoder={"max_length": 8},
        ema_decay=0.9,
        sharding={"meta_init": True},
        seed=7,
    )
    assert all(p.is_meta for p in module.transformer.parameters())
    module.out_file = args.out_file
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=FSDP2Strategy() if args.devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(module, torch.utils.data.DataLoader([0], batch_size=None), verbose=False)


if __name__ == "__main__":
    main()
