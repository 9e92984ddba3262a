import pytest
import torch

from sana_lightning.data.shapes import write_shapes_dataset


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small Shapes dataset: 4 train shards of 24, one val shard, 2 evaluation prompts per task."""
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(str(root), num_train=96, num_val=16, samples_per_shard=24, eval_prompts_per_task=2)
    return root


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield
