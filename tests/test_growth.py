import pytest
import torch

from sana_lightning.blocks import keep_blocks
from sana_lightning.growth import GrowthConfig, grow
from sana_lightning.presets import build_transformer


def source_model(num_layers=4, qk_norm="rms_norm_across_heads", **kwargs):
    torch.manual_seed(0)
    return build_transformer("tiny", num_layers=num_layers, qk_norm=qk_norm, **kwargs).eval()


def run(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    text = torch.randn(2, 5, 384, generator=generator)
    t = torch.tensor([250.0, 900.0])
    with torch.no_grad():
        return model(x, encoder_hidden_states=text, encoder_attention_mask=torch.ones(2, 5), timestep=t).sample


def assert_same_block(a, b):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("qk_norm", [None, "rms_norm_across_heads"])
def test_partial_preservation_without_dropping_is_the_source_function(qk_norm):
    source = source_model(qk_norm=qk_norm)
    grown, origins = grow(source, GrowthConfig(target_layers=12, drop_last=0, qk_norm=qk_norm))
    assert origins == [0, 1, 2, 3] + [None] * 8 and grown.config.num_layers == 12
    assert (run(grown) - run(source)).abs().max().item() <= 1e-5


def test_growth_adds_qk_rmsnorm_with_unit_weights():
    source = source_model(qk_norm=None)
    grown, _ = grow(source, GrowthConfig(target_layers=6, drop_last=0))
    assert grown.config.qk_norm == "rms_norm_across_heads"
    for block in grown.transformer_blocks:
        for norm in (block.attn1.norm_q, block.attn1.norm_k, block.attn2.norm_q, block.attn2.norm_k):
            assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert torch.equal(grown.transformer_blocks[2].attn1.to_q.weight, source.transformer_blocks[2].attn1.to_q.weight)


def test_partial_preservation_drops_the_last_k_source_blocks():
    source = source_model(num_layers=6)
    grown, origins = grow(source, GrowthConfig(target_layers=18, drop_last=2))
    assert origins == [0, 1, 2, 3] + [None] * 14
    shortened = keep_blocks(source, [0, 1, 2, 3])
    assert (run(grown) - run(shortened)).abs().max().item() <= 1e-5
    assert (run(grown) - run(source)).abs().max().item() > 1e-3  # the dropped blocks mattered
    new = grown.transformer_blocks[4]
    assert new.attn1.to_out[0].weight.abs().sum() == 0 and new.ff.conv_point.weight.abs().sum() == 0
    assert new.attn1.to_q.weight.std() > 0  # the rest of a new block is random, so it can learn


def test_cyclic_copies_block_i_mod_n():
    source = source_model(num_layers=3)
    grown, origins = grow(source, GrowthConfig(target_layers=7, strategy="cyclic", zero_new=False))
    assert origins == [0, 1, 2, 0, 1, 2, 0]
    for block, origin in zip(grown.transformer_blocks, origins):
        block_state = block.state_dict()
        for name, value in source.transformer_blocks[origin].state_dict().items():
            assert torch.equal(block_state[name], value)
    zeroed, _ = grow(source, GrowthConfig(target_layers=7, strategy="cyclic", zero_new=True))
    assert (run(zeroed) - run(source)).abs().max().item() <= 1e-5


def test_block_expand_repeats_each_block_in_place_and_starts_as_the_source():
    source = source_model(num_layers=2, qk_norm="rms_norm_across_heads")
    grown, origins = grow(source, GrowthConfig(target_layers=6, strategy="block_expand"))
    assert origins == [0, 0, 0, 1, 1, 1]
    assert_same_block(grown.transformer_blocks[3], source.transformer_blocks[1])
    assert grown.transformer_blocks[4].attn2.to_out[0].weight.abs().sum() == 0
    assert torch.equal(grown.transformer_blocks[4].attn1.to_q.weight, source.transformer_blocks[1].attn1.to_q.weight)
    assert (run(grown) - run(source)).abs().max().item() <= 1e-5


def test_stack_repeats_the_whole_source():
    source = source_model(num_layers=2, qk_norm="rms_norm_across_heads")
    grown, origins = grow(source, GrowthConfig(target_layers=6, strategy="stack"))
    assert origins == [0, 1, 0, 1, 0, 1]
    for block, origin in zip(grown.transformer_blocks, origins):
        assert_same_block(block, source.transformer_blocks[origin])


def test_non_block_parameters_are_copied():
    source = source_model()
    grown, _ = grow(source, GrowthConfig(target_layers=8))
    for name, value in source.state_dict().items():
        if not name.startswith("transformer_blocks."):
            assert torch.equal(grown.state_dict()[name], value), name


@pytest.mark.parametrize(
    "config, match",
    [
        (GrowthConfig(target_layers=8, drop_last=4), "drop_last=4 must be in \\[0, 3\\]"),
        (GrowthConfig(target_layers=1, drop_last=2), "target_layers=1 is smaller than the 2 preserved blocks"),
        (
            GrowthConfig(target_layers=10, strategy="stack"),
            "stack needs target_layers a multiple of the source's 4 blocks",
        ),
        (GrowthConfig(target_layers=8, strategy="net2net"), "unknown growth strategy 'net2net'"),
        (GrowthConfig(target_layers=8, qk_norm=None), None),
    ],
)
def test_impossible_growth_is_a_clear_error(config, match):
    source = source_model(qk_norm="rms_norm_across_heads")
    with pytest.raises(ValueError, match=match or "cannot remove QK normalisation"):
        grow(source, config)
