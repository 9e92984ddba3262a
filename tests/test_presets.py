import pytest

from sana_lightning.presets import PRESETS, build_transformer


def count(preset: str) -> int:
    return sum(p.numel() for p in build_transformer(preset, device="meta").parameters())


@pytest.mark.parametrize("preset, low, high", [("sana-1.6b", 1.60e9, 1.65e9), ("sana-4.8b", 4.7e9, 4.9e9)])
def test_big_presets_match_the_paper_sizes_on_meta(preset, low, high):
    assert low <= count(preset) <= high


def test_big_presets_share_width_and_differ_in_depth():
    small, big = build_transformer("sana-1.6b", device="meta"), build_transformer("sana-4.8b", device="meta")
    assert (len(small.transformer_blocks), len(big.transformer_blocks)) == (20, 60)
    assert small.config.num_attention_heads * small.config.attention_head_dim == 2240
    assert big.config.qk_norm == "rms_norm_across_heads"


def test_cpu_presets_stay_small():
    assert count("tiny") < 1_000_000
    assert 1_000_000 < count("small") < 5_000_000


def test_unknown_preset_and_option_are_one_line_errors():
    with pytest.raises(ValueError, match=f"unknown preset 'sana-9b': choose one of {', '.join(PRESETS)}"):
        build_transformer("sana-9b")
    with pytest.raises(ValueError, match="unknown SanaTransformer2DModel option"):
        build_transformer("tiny", num_blocks=3)
