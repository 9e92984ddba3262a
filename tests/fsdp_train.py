"""Train a grown tiny Sana on fixed global batches, on 1 process or FSDP2-sharded over N CPU processes (gloo).

    python tests/fsdp_train.py SOURCE SHARDS OUT_DIR --devices 2

Every step draws its noise for the whole global batch from the same seed and rank r trains on samples r::N, so the
sharded run must reproduce the single-process run. Writes `result.json` (losses per step) and `weights.pt` (full
trained and EMA weights) in OUT_DIR and saves the final checkpoint as `final.ckpt` (a folder when sharded).
"""

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from sana_lightning.data.shards import expand_shards
from sana_lightning.data.stream import ShardStream, StreamConfig
from sana_lightning.flow import flow_loss
from sana_lightning.growth_module import GrowthModule
from sana_lightning.sharding import FSDP2Strategy


class GlobalBatchGrowth(GrowthModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.losses = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        mine = rank_share(self, self.flow_inputs(batch, self.noise_generator(batch_idx)))
        prediction = self.prediction(self.transformer, mine)
        loss = flow_loss(prediction, mine["x0"], mine["noise"])
        self.losses.append(self.all_gather(loss.detach()).mean().item())
        return loss

    def on_train_end(self) -> None:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = {name: get_model_state_dict(model, options=options) for name, model in self.transformers().items()}
        if self.global_rank == 0:
            torch.save(weights, Path(self.out_dir, "weights.pt"))
            Path(self.out_dir, "result.json").write_text(json.dumps({"losses": self.losses}))


def rank_share(module: L.LightningModule, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank r's samples r::N of the global batch's step inputs."""
    return {k: v[module.global_rank :: module.trainer.world_size] for k, v in inputs.items()}


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("source")
    parser.add_argument("shards")
    parser.add_argument("out_dir")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    return parser


def global_batches(shards: str, steps: int) -> list[dict]:
    """`steps` batches of 8, read before any process group: the same global batches on every rank."""
    return list(ShardStream(expand_shards(shards), StreamConfig(8, 32, steps, shuffle_buffer=1)))


def fit(module: L.LightningModule, batches: list[dict], devices: int, **options) -> L.Trainer:
    """Train on `batches` in order, on 1 process or FSDP2-sharded over `devices` CPU processes."""
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=FSDP2Strategy() if devices > 1 else "auto",
        max_steps=len(batches),
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


def main() -> None:
    args = arguments().parse_args()
    batches = global_batches(args.shards, args.steps)
    L.seed_everything(0)
    module = GlobalBatchGrowth(
        pretrained=args.source,
        growth={"target_layers": 6},
        preset="tiny",
        text_encoder={"max_length": 8},
        ema_decay=0.9,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        log_block_norms_every_n_steps=0,
    )
    module.out_dir = args.out_dir
    # gradient_clip_val small enough to clip every step: the norm must be the full gradient's
    trainer = fit(module, batches, args.devices, gradient_clip_val=0.05)
    trainer.save_checkpoint(Path(args.out_dir, "final.ckpt"))


if __name__ == "__main__":
    main()
