import logging
import re

import pytest
import torch

from sana_lightning.blocks import keep_blocks
from sana_lightning.growth import GrowthConfig, grow, max_output_difference
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
        (GrowthConfig(target_layers=3, strategy="interpolation"), "target_layers=3 is smaller than the source's 4"),
        (GrowthConfig(target_layers=8, init="xavier"), "unknown growth init 'xavier'"),
        (GrowthConfig(target_layers=8, qk_norm=None), None),
    ],
)
def test_impossible_growth_is_a_clear_error(config, match):
    source = source_model(qk_norm="rms_norm_across_heads")
    with pytest.raises(ValueError, match=match or "cannot remove or change QK normalisation"):
        grow(source, config)


@pytest.mark.parametrize(
    "strategy, origins",
    [
        ("progressive", [0, 1, 2, 2, 2, 2, 2]),  # the last source block copied
        ("interpolation", [0, 0, 0, 1, 1, 2, 2]),  # block i copies floor(i * 3 / 7)
        ("random", [0, 1, 2, None, None, None, None]),
    ],
)
def test_progressive_interpolation_and_random_growth(strategy, origins):
    source = source_model(num_layers=3)
    grown, planned = grow(source, GrowthConfig(target_layers=7, strategy=strategy))
    assert planned == origins
    for block, origin in zip(grown.transformer_blocks, origins):
        if origin is not None:
            assert torch.equal(block.attn1.to_q.weight, source.transformer_blocks[origin].attn1.to_q.weight)
    difference = (run(grown) - run(source)).abs().max().item()
    if strategy == "random":  # fresh blocks are never zeroed: the baseline that does not start as the source
        assert grown.transformer_blocks[5].ff.conv_point.weight.abs().sum() > 0 and difference > 1e-4
    else:  # copies zeroed (zero_new): the source's function
        assert difference <= 1e-5


def test_zero_gate_also_zeroes_the_scale_shift_table_and_stays_identity():
    source = source_model()
    grown, _ = grow(source, GrowthConfig(target_layers=8, drop_last=0, zero_gate=True))
    assert torch.equal(grown.transformer_blocks[3].scale_shift_table, source.transformer_blocks[3].scale_shift_table)
    new = grown.transformer_blocks[6]
    assert new.scale_shift_table.abs().sum() == 0 and new.attn2.to_out[0].weight.abs().sum() == 0
    assert (run(grown) - run(source)).abs().max().item() < 1e-5


def test_official_init_of_new_blocks():
    torch.manual_seed(0)
    grown, _ = grow(source_model(), GrowthConfig(target_layers=8, drop_last=0, zero_new=False))
    new = grown.transformer_blocks[6]
    assert new.attn1.to_q.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert new.ff.conv_inverted.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert new.ff.conv_depth.weight.std().item() == pytest.approx(0.2, rel=0.05)
    assert new.attn1.to_out[0].bias.abs().sum() == 0 and new.ff.conv_depth.bias.abs().sum() == 0
    assert torch.equal(new.attn2.norm_k.weight, torch.ones_like(new.attn2.norm_k.weight))
    default, _ = grow(source_model(), GrowthConfig(target_layers=8, drop_last=0, zero_new=False, init="diffusers"))
    assert default.transformer_blocks[6].attn1.to_q.weight.std() > 0.05  # kaiming-uniform: 1 / sqrt(3 * 64)


def test_the_target_takes_every_width_from_the_source():
    source = source_model(
        num_attention_heads=3, attention_head_dim=16, cross_attention_dim=48, cross_attention_head_dim=24, mlp_ratio=2.0
    )
    grown, _ = grow(source, GrowthConfig(target_layers=6, drop_last=0))
    differing = {k for k in source.config if not k.startswith("_") and grown.config[k] != source.config[k]}
    assert differing == {"num_layers"}
    assert (run(grown) - run(source)).abs().max().item() <= 1e-5


def test_two_stage_growth_is_identity_where_one_stage_is_not(caplog):
    """SANA's recipe: add QK norm to the source and fine-tune it (stage 1), then grow (stage 2)."""
    source = source_model(qk_norm=None)
    config = GrowthConfig(target_layers=10, strategy="partial_preservation", drop_last=0, zero_gate=True)
    with caplog.at_level(logging.WARNING, logger="sana_lightning.growth"):
        one_stage, _ = grow(source, config)
    one_stage_difference = max_output_difference(source, one_stage)
    assert one_stage_difference > 1e-2
    (line,) = caplog.messages
    assert "growth is not identity at init" in line and "\n" not in line
    assert float(re.search(r"differs by ([0-9.e-]+)", line).group(1)) == pytest.approx(one_stage_difference, rel=1e-2)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sana_lightning.growth"):
        adapted, origins = grow(source, GrowthConfig(target_layers=4, drop_last=0))  # stage 1 (before fine-tuning)
    assert origins == [0, 1, 2, 3] and "before growing" in caplog.messages[0]
    with torch.no_grad():  # stands in for the QK-norm fine-tuning
        for block in adapted.transformer_blocks:
            block.attn1.norm_q.weight.mul_(1.1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sana_lightning.growth"):
        grown, _ = grow(adapted, config)  # stage 2
    assert not caplog.messages
    assert max_output_difference(adapted, grown) < 1e-5


def test_a_non_preserving_growth_warns_with_the_qk_norm_difference_alone(caplog):
    source = source_model(qk_norm=None)
    adapted, _ = grow(source, GrowthConfig(target_layers=4, drop_last=0))
    with caplog.at_level(logging.WARNING, logger="sana_lightning.growth"):
        grow(source, GrowthConfig(target_layers=8, drop_last=2))  # drops blocks: the grown model differs anyway
    measured = float(re.search(r"differs by ([0-9.e-]+)", caplog.messages[-1]).group(1))
    assert measured == pytest.approx(max_output_difference(source, adapted), rel=1e-2)
