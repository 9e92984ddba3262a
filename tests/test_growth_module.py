import csv
import json

import lightning as L
import pytest
import torch
from diffusers import SanaTransformer2DModel
from lightning.pytorch.loggers import CSVLogger
from test_module import CONFIGS

from sana_lightning.checkpoints import load_checkpoint_transformer
from sana_lightning.cli import main
from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.growth_module import GrowthModule
from sana_lightning.lightning_cli import SanaCLI
from sana_lightning.presets import build_transformer
from sana_lightning.text_encoder import TextEncoderConfig


def growth_module(source, **kwargs):
    return GrowthModule(
        pretrained=str(source),
        growth=kwargs.pop("growth", {"target_layers": 8, "drop_last": 0}),
        preset="tiny",
        text_encoder=TextEncoderConfig(max_length=8),
        ema_decay=0.9,
        **kwargs,
    )


def velocity(transformer):
    generator = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 3, 32, 32, generator=generator), torch.randn(2, 8, 384, generator=generator)
    with torch.no_grad():
        return transformer(x, encoder_hidden_states=text, timestep=torch.tensor([100.0, 700.0])).sample


def test_grown_module_starts_as_the_source_ema_model(tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    source_ema = load_checkpoint_transformer(str(tiny_checkpoint))
    assert torch.equal(source_ema.proj_out.weight, checkpoint["state_dict"]["ema.module.proj_out.weight"])
    module = growth_module(tiny_checkpoint)
    assert module.block_labels == ["src0", "src1", "src2", "src3"] + ["new"] * 4
    assert (velocity(module.transformer) - velocity(source_ema)).abs().max().item() <= 1e-5
    raw = load_checkpoint_transformer(str(tiny_checkpoint), weights="raw")
    assert torch.equal(raw.proj_out.weight, checkpoint["state_dict"]["transformer.proj_out.weight"])


def test_growth_trains_and_logs_block_update_norms_at_the_steps_they_were_measured(
    tiny_checkpoint, shapes_dir, tmp_path
):
    module = growth_module(
        tiny_checkpoint, growth={"target_layers": 6, "drop_last": 2}, log_block_norms_every_n_steps=2
    )
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=4, batches_per_epoch=4, num_workers=0))
    with open(tmp_path / "metrics.csv") as file:
        rows = [r for r in csv.DictReader(file) if r.get("blocks/update_norm/00_src0")]
    names = {k for k in rows[0] if k.startswith("blocks/")}
    assert names == {
        "blocks/update_norm/00_src0",
        "blocks/update_norm/01_src1",
        "blocks/update_norm/02_new",
        "blocks/update_norm/03_new",
        "blocks/update_norm/04_new",
        "blocks/update_norm/05_new",
    }
    # Measured at steps 0 and 2 only: no stale copies at the logging steps 1 and 3 between them.
    assert [int(r["step"]) for r in rows] == [0, 2]
    first, later = ({k: float(r[k]) for k in names} for r in rows)
    assert first["blocks/update_norm/00_src0"] > 0.01
    assert first["blocks/update_norm/05_new"] == 0  # identity-initialised: the block leaves its input unchanged
    # After two steps the new blocks have just left the identity: small but non-zero updates.
    assert 0 < later["blocks/update_norm/05_new"] < later["blocks/update_norm/00_src0"]


def test_preserved_blocks_can_train_with_a_smaller_learning_rate(tiny_checkpoint):
    optimizer = lambda groups: torch.optim.AdamW(groups, lr=1e-3)  # noqa: E731
    module = growth_module(tiny_checkpoint, preserved_lr_scale=0.1, optimizer=optimizer)
    groups = module.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    preserved = {id(p) for b in module.transformer.transformer_blocks[:4] for p in b.parameters()}
    assert {id(p) for p in groups[1]["params"]} == preserved


def test_the_target_takes_its_widths_from_the_source_and_a_preset_is_only_checked(tiny_checkpoint):
    module = GrowthModule(
        pretrained=str(tiny_checkpoint), growth={"target_layers": 6}, text_encoder=TextEncoderConfig(max_length=8)
    )
    assert module.hparams.preset is None and module.transformer.config.num_attention_heads == 2
    with pytest.raises(ValueError) as error:
        GrowthModule(pretrained=str(tiny_checkpoint), growth={"target_layers": 8}, preset="small")
    assert str(error.value) == (
        "growth takes the target's widths from the source, which differs from preset='small' / transformer "
        "overrides in num_attention_heads=2 (target 4), num_cross_attention_heads=2 (target 4), "
        "cross_attention_dim=64 (target 128): drop them from the growth config"
    )


def test_qk_norm_adaptation_is_growth_to_the_same_depth(tmp_path, caplog):
    """Stage 1 of SANA's 1.6B -> 4.8B recipe: a source without QK norm gets it, every block kept, then trains."""
    torch.manual_seed(0)
    build_transformer("tiny", num_layers=3, qk_norm=None).save_pretrained(tmp_path / "no_qk")
    adapting = growth_module(tmp_path / "no_qk", growth={"target_layers": 3, "drop_last": 0})
    assert adapting.block_labels == ["src0", "src1", "src2"]
    assert adapting.transformer.config.qk_norm == "rms_norm_across_heads"
    assert "fine-tune it with QK norm (stage 1" in caplog.text


def test_source_errors_name_the_values_and_the_fix(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m sana_lightning.cli fit --config configs/base.yaml"):
        growth_module(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="no checkpoint matches"):
        growth_module(tmp_path / "runs/*/last.ckpt")


def test_grow_command_writes_a_diffusers_model(tiny_checkpoint, tmp_path):
    main(["grow", str(tiny_checkpoint), str(tmp_path / "grown"), "12", "--strategy", "block_expand"])
    grown = SanaTransformer2DModel.from_pretrained(tmp_path / "grown")
    assert grown.config.num_layers == 12
    assert json.loads((tmp_path / "grown/growth.json").read_text())["block_origins"] == [
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        2,
        2,
        3,
        3,
        3,
    ]
    # The diffusers directory is itself a valid growth source.
    assert growth_module(tmp_path / "grown", growth={"target_layers": 14, "drop_last": 0}).block_labels[-1] == "new"


def test_grow_config_runs_from_the_cli(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    SanaCLI(
        args=[
            "fit",
            "--config",
            str(CONFIGS / "base.yaml"),
            "--config",
            str(CONFIGS / "grow.yaml"),
            "--config",
            str(CONFIGS / "tiny.yaml"),
            f"--model.init_args.pretrained={tiny_checkpoint}",
            "--model.init_args.growth.target_layers=6",
            "--trainer.max_steps=2",
            "--trainer.logger.init_args.save_dir=runs",
        ]
    )
    assert (tmp_path / "runs/grow/version_0/checkpoints/last.ckpt").exists()
