"""`sharding.meta_init`: the transformer built on the meta device and filled shard by shard holds the same weights as
the eager build, on 1 process and FSDP2-sharded over 2 (gloo), reading each source tensor once."""

import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import sana_lightning.materialize as materialize
from sana_lightning.blocks import keep_blocks
from sana_lightning.checkpoints import load_checkpoint_transformer
from sana_lightning.cli import main
from sana_lightning.factory import TransformerSource, build_sharded, resolve_transformer
from sana_lightning.growth import GrowthConfig, grow
from sana_lightning.growth_module import GrowthModule
from sana_lightning.presets import build_transformer
from sana_lightning.sharding import ShardingConfig

ROOT = Path(__file__).parents[1]
GROWTH = {"target_layers": 6}  # 4 source blocks: 0, 1 kept, 2, 3 dropped, 4 fresh blocks


def growth_module(source, meta_init: bool) -> GrowthModule:
    return GrowthModule(
        pretrained=str(source),
        growth=GROWTH,
        preset="tiny",
        text_encoder={"max_length": 8},
        ema_decay=0.9,
        sharding={"meta_init": meta_init},
        seed=7,
    )


@pytest.fixture(scope="module")
def safetensors_source(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("consolidated") / "ema-diffusers"
    main(["consolidate", str(tiny_checkpoint), "--format", "safetensors", "--output", str(out)])
    return out


@pytest.fixture(scope="module")
def eager_weights(safetensors_source):
    return growth_module(safetensors_source, meta_init=False).transformer.state_dict()


def assert_same(state: dict, reference: dict) -> None:
    assert state.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(state[name], value), name


def test_consolidate_writes_the_ema_or_raw_transformer_as_safetensors(tiny_checkpoint, safetensors_source, tmp_path):
    assert (safetensors_source / "diffusion_pytorch_model.safetensors").is_file()
    ema = load_checkpoint_transformer(str(tiny_checkpoint), "ema").state_dict()
    assert_same(load_checkpoint_transformer(str(safetensors_source)).state_dict(), ema)
    main(
        [
            "consolidate",
            str(tiny_checkpoint),
            "--format",
            "safetensors",
            "--weights",
            "raw",
            "--output",
            f"{tmp_path}/r",
        ]
    )
    raw = load_checkpoint_transformer(str(tiny_checkpoint), "raw").state_dict()
    assert_same(load_checkpoint_transformer(f"{tmp_path}/r").state_dict(), raw)
    with pytest.raises(ValueError, match="--weights picks the transformer written by --format safetensors"):
        main(["consolidate", str(tiny_checkpoint), "--weights", "raw"])


class CountingSafeOpen:
    """`safe_open` counting the tensors read (whole or sliced) by name."""

    reads = Counter()

    def __init__(self, *args, **kwargs) -> None:
        self.handle = safe_open(*args, **kwargs)

    def __enter__(self):
        inner = self.handle.__enter__()
        reads = self.reads

        class Handle:
            keys = inner.keys

            def get_tensor(self, name):
                reads[name] += 1
                return inner.get_tensor(name)

            def get_slice(self, name):
                reads[name] += 1
                return inner.get_slice(name)

        return Handle()

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)


def test_meta_init_growth_reads_each_source_tensor_once_and_matches_the_eager_build(
    safetensors_source, eager_weights, monkeypatch
):
    module = growth_module(safetensors_source, meta_init=True)
    assert all(p.is_meta for p in [*module.transformer.parameters(), *module.ema.module.parameters()])
    assert module.block_origins == [0, 1, None, None, None, None]
    monkeypatch.setattr(materialize, "safe_open", CountingSafeOpen)
    CountingSafeOpen.reads.clear()
    module.configure_model()  # no device mesh: one process, not sharded
    source = load_checkpoint_transformer(str(safetensors_source)).state_dict()
    used = {k for k in source if not k.startswith(("transformer_blocks.2.", "transformer_blocks.3."))}
    assert set(CountingSafeOpen.reads) == used and set(CountingSafeOpen.reads.values()) == {1}
    assert_same(module.transformer.state_dict(), eager_weights)
    assert_same(module.ema.module.state_dict(), eager_weights)  # the EMA starts as the transformer


def test_a_checkpoint_file_source_matches_the_eager_build(tiny_checkpoint):
    meta = growth_module(tiny_checkpoint, meta_init=True)
    meta.configure_model()
    assert_same(meta.transformer.state_dict(), growth_module(tiny_checkpoint, meta_init=False).transformer.state_dict())


def test_two_sharded_ranks_build_the_same_weights_as_one_process(safetensors_source, eager_weights, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(ROOT / "tests/meta_init_build.py"), str(safetensors_source), str(tmp_path / "w.pt")]
    done = subprocess.run([*args, "--devices=2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = torch.load(tmp_path / "w.pt")
    assert_same(weights["loss"], eager_weights)
    assert_same(weights["loss_ema"], eager_weights)


def test_fresh_blocks_are_drawn_per_block_whatever_the_global_random_state():
    source = build_transformer("tiny", num_layers=4)
    torch.manual_seed(1)
    first, _ = grow(source, GrowthConfig(target_layers=6, drop_last=0), seed=3)
    torch.manual_seed(2)
    second, _ = grow(source, GrowthConfig(target_layers=6, drop_last=0), seed=3)
    assert_same(first.state_dict(), second.state_dict())
    other, _ = grow(source, GrowthConfig(target_layers=6, drop_last=0), seed=4)
    assert not torch.equal(other.transformer_blocks[5].attn1.to_q.weight, first.transformer_blocks[5].attn1.to_q.weight)


def test_a_preset_on_meta_is_drawn_per_block_with_its_position_embeddings(tmp_path):
    spec = TransformerSource(preset="tiny", overrides={"interpolation_scale": 1})
    built = [build_sharded(spec, {}, None, ShardingConfig(), seed=s) for s in (5, 5, 6)]
    assert_same(built[0].state_dict(), built[1].state_dict())
    assert not torch.equal(built[2].proj_out.weight, built[0].proj_out.weight)
    eager, _ = resolve_transformer(spec, {})
    assert torch.equal(built[0].patch_embed.pos_embed, eager.patch_embed.pos_embed)  # not in the state dict
    eager.save_pretrained(tmp_path)
    loaded = build_sharded(TransformerSource(pretrained=str(tmp_path)), {}, None, ShardingConfig())
    assert_same(loaded.state_dict(), eager.state_dict())
    assert torch.equal(loaded.patch_embed.pos_embed, eager.patch_embed.pos_embed)


def test_growth_and_block_selection_run_on_meta(caplog):
    source = build_transformer("tiny", device="meta", num_layers=4, qk_norm=None)
    with caplog.at_level(logging.WARNING, logger="sana_lightning.growth"):
        grown, origins = grow(source, GrowthConfig(target_layers=8))
    assert all(p.is_meta for p in grown.parameters()) and origins == [0, 1] + [None] * 6
    assert "not measured on the meta device" in caplog.messages[0]
    kept = keep_blocks(grown, [0, 3])
    assert kept.config.num_layers == 2 and all(p.is_meta for p in kept.parameters())
