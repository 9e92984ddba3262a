"""Memory on paper: optimizer-state bytes equal what the optimizers really keep; FSDP splits the right parts."""

import math

import pytest
import torch

from sana_lightning.cli import main
from sana_lightning.memory import (
    block_activation_bytes,
    host_memory,
    memory_plan,
    memory_report,
    optimizer_state_bytes,
)
from sana_lightning.optim import CAME, CAME8bit
from sana_lightning.presets import build_transformer


@pytest.mark.parametrize("name, cls", [("CAME-32bit", CAME), ("CAME-8bit", CAME8bit)])
def test_predicted_optimizer_state_equals_the_real_state(name, cls):
    model = build_transformer("tiny", num_layers=1, attention_head_dim=40)  # ragged rows: 160 wide, 2 blocks of 128
    optimizer = cls(model.parameters(), lr=1e-3, **({"min_8bit_size": 1024} if cls is CAME8bit else {}))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    real = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    predicted = sum(optimizer_state_bytes(name, tuple(p.shape), min_8bit_size=1024) for p in model.parameters())
    assert predicted == real


def test_activation_bytes_grow_with_batch_and_tokens_and_shrink_in_bf16():
    tiny = build_transformer("tiny", device="meta")
    base = block_activation_bytes(tiny, 2, 64, 8, "float32")
    assert block_activation_bytes(tiny, 4, 64, 8, "float32") == 2 * base
    # Less than half would be impossible; more than half: Sana's linear attention computes in float32.
    assert base // 2 < block_activation_bytes(tiny, 2, 64, 8, "bfloat16") < base
    assert block_activation_bytes(tiny, 2, 256, 8, "float32") > 3 * base


def test_memory_plan_shards_weights_grads_and_optimizer_but_not_activations():
    eight, sixteen = memory_plan("sana-4.8b", 8), memory_plan("sana-4.8b", 16)
    params = sum(p.numel() for p in build_transformer("sana-4.8b", device="meta").parameters())
    assert eight.weights == eight.grads == 4 * params / 8
    assert math.isclose(sixteen.optimizer * 2, eight.optimizer)
    assert sixteen.activations == eight.activations
    assert eight.activations_checkpointed < eight.activations / 10
    assert eight.total(checkpointed=True) < 80e9 < eight.total(checkpointed=False)  # why grow_4.8b.yaml checkpoints


def test_memory_command_prints_a_table_per_gpu_count(capsys):
    main(["memory", "--preset", "sana-1.6b", "--gpus", "[8, 32]", "--frozen_params", "0"])
    out = capsys.readouterr().out
    assert "8 GPUs" in out and "32 GPUs" in out and "fits" in out
    assert "host GB per rank" in out and "grown from" not in out  # sana-1.6b: drawn from scratch by default


def test_host_memory_per_rank_eager_holds_model_and_source_meta_a_shard_one_block_and_source_slices(capsys):
    def count(**overrides) -> int:
        return sum(p.numel() for p in build_transformer("sana-4.8b", device="meta", **overrides).parameters())

    n, source = count(), count(num_layers=20)
    block = sum(p.numel() for p in build_transformer("sana-4.8b", device="meta").transformer_blocks[0].parameters())
    drawn = n - 59 * block  # a 1-block model: one block and everything outside the blocks
    eager, meta = 4 * (n + source), 4 * (n / 8 + drawn + source / 8)
    assert host_memory("sana-4.8b", 8, 20) == (eager, meta)
    assert host_memory("sana-4.8b", 8) == (4 * n, 4 * (n / 8 + drawn))  # a preset from scratch reads no source
    assert 4.7e9 < n < 4.8e9 and 1.5e9 < source < 1.7e9
    plans = memory_report("sana-4.8b", [8, 16], frozen_params=0)
    assert (plans[0].host_eager, plans[0].host_meta) == (eager, meta)  # SANA 1.5's source: sana-1.6b's 20 blocks
    assert plans[1].host_meta == 4 * (n / 16 + drawn + source / 16)
    out = capsys.readouterr().out
    assert "grown from 20 blocks" in out and f"{eager / 1e9:.2f}" in out and f"{meta / 1e9:.2f}" in out
