"""Pruning recovery with a sharded teacher, on 2 CPU processes (gloo): each rank holds about half of the frozen teacher,
the distilled run (student and teacher built on the meta device, each rank's shard read from their sources)
reproduces the eager single-process run on the same global batches, and the sharded checkpoint holds no teacher
weights. This file is also the training script the tests start:

    python tests/test_teacher_sharding.py PRUNED SHARDS OUT_DIR --teacher CHECKPOINT --devices 2
"""

import json
from pathlib import Path

import pytest
import torch
from fsdp_train import arguments, fit, global_batches, rank_share
from test_fsdp import _run
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.tensor import DTensor

from sana_lightning.prune_module import PruneRecoveryModule
from sana_lightning.pruning.command import prune_checkpoint

STEPS = 3


class GlobalBatchRecovery(PruneRecoveryModule):
    """Recovery where rank r trains on samples r::N of each global batch; records the global mean losses."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record = {"loss": [], "distill": []}

    def flow_inputs(self, batch: dict, generator: torch.Generator, sigmas=None) -> dict[str, torch.Tensor]:
        return rank_share(self, super().flow_inputs(batch, generator, sigmas))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.flow_step(batch, self.noise_generator(batch_idx))
        self.record["loss"].append(self.all_gather(loss.detach()).mean().item())
        return loss

    def log(self, name: str, value, *args, **kwargs) -> None:
        if name == "train/distill":
            self.record["distill"].append(self.all_gather(value.detach()).mean().item())
        super().log(name, value, *args, **kwargs)

    def on_train_end(self) -> None:
        params = list(self.teacher.parameters())
        local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in params)
        trained = {id(p) for group in self.trainer.optimizers[0].param_groups for p in group["params"]}
        self.record |= {
            "teacher_bytes": self.all_gather(torch.tensor(local)).reshape(-1).tolist(),
            "full_teacher_bytes": sum(p.numel() * p.element_size() for p in params),  # a DTensor's numel is global
            "teacher_sharded": all(isinstance(p, DTensor) for p in params),
            "teacher_frozen": not any(p.requires_grad or p.grad is not None or id(p) in trained for p in params),
        }
        if self.global_rank == 0:
            Path(self.out_dir, "result.json").write_text(json.dumps(self.record))


def main() -> None:
    parser = arguments()
    parser.add_argument("--teacher", required=True)
    args = parser.parse_args()
    batches = global_batches(args.shards, args.steps)
    module = GlobalBatchRecovery(
        pretrained=args.source,
        teacher=args.teacher,
        distill_weight=0.5,
        text_encoder={"max_length": 8},
        ema_decay=None,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        sharding={"meta_init": args.devices > 1},  # sharded: student and teacher built on meta, each rank's shard read
    )
    module.out_dir = args.out_dir
    trainer = fit(module, batches, args.devices)
    path = Path(args.out_dir, "final.ckpt")
    trainer.save_checkpoint(path)
    if args.devices > 1:  # loads back into the sharded student, the sharded teacher left in place
        trainer.strategy.load_checkpoint(path, weights_only=False)


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, shapes_dir, tmp_path_factory):
    """The same distilled recovery (4 -> 2 blocks) on 1 process and sharded over 2."""
    pruned = prune_checkpoint(str(tiny_checkpoint), str(tmp_path_factory.mktemp("pruned") / "pruned"), 2, "last")
    runs = {}
    for devices in (1, 2):
        out = tmp_path_factory.mktemp(f"recovery{devices}")
        args = [str(pruned), f"{shapes_dir}/train-*.tar", str(out), f"--teacher={tiny_checkpoint}"]
        _run(__file__, *args, f"--devices={devices}", f"--steps={STEPS}")
        runs[devices] = json.loads((out / "result.json").read_text()) | {"dir": out}
    return runs


def test_each_rank_holds_about_half_of_the_frozen_teacher(runs):
    sharded = runs[2]
    assert sharded["teacher_sharded"] and sharded["teacher_frozen"] and runs[1]["teacher_frozen"]
    assert sharded["full_teacher_bytes"] == runs[1]["full_teacher_bytes"] == runs[1]["teacher_bytes"][0]
    ratios = [local / sharded["full_teacher_bytes"] for local in sharded["teacher_bytes"]]
    assert len(ratios) == 2 and max(ratios) <= 0.55, ratios


def test_sharded_distillation_matches_single_process_on_the_same_global_batch(runs):
    for name in ("loss", "distill"):
        single, sharded = torch.tensor(runs[1][name]), torch.tensor(runs[2][name])
        assert len(single) == STEPS and single.min() > 0
        torch.testing.assert_close(sharded, single, rtol=5e-5, atol=0, msg=name)
    assert runs[1]["loss"][0] != runs[1]["loss"][-1]  # the student trained


def test_sharded_checkpoint_holds_the_student_but_not_the_teacher(runs):
    folder = runs[2]["dir"] / "final.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2
    keys = list(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    assert any(k.startswith("state_dict.transformer.") for k in keys)
    assert not [k for k in keys if "teacher." in k]  # the 1-process checkpoint: tests/test_pruning.py


if __name__ == "__main__":
    main()
