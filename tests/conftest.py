import lightning as L
import pytest
import torch

from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.data.shapes import write_shapes_dataset
from sana_lightning.module import SanaFlowModule, TextEncoderConfig


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small Shapes dataset: 4 train shards of 24, one val shard, 2 evaluation prompts per task."""
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(str(root), num_train=96, num_val=16, samples_per_shard=24, eval_prompts_per_task=2)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, shapes_dir):
    """A 4-block tiny model trained for 2 steps and saved by Lightning."""
    path = tmp_path_factory.mktemp("trained") / "model.ckpt"
    L.seed_everything(0)
    module = SanaFlowModule(preset="tiny", transformer={"num_layers": 4}, text_encoder=TextEncoderConfig(max_length=8))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(module, ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=4, batches_per_epoch=2, num_workers=0))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield
