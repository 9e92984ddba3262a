import json

import lightning as L
import pytest
import torch

from sana_lightning.blocks import keep_blocks, zero_block_outputs
from sana_lightning.cli import main
from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.data.precompute import precompute
from sana_lightning.module import SanaFlowModule
from sana_lightning.presets import build_transformer
from sana_lightning.prune_module import PruneRecoveryModule
from sana_lightning.pruning import CalibrationBatch, block_importance, blocks_to_remove, prune, select_blocks
from sana_lightning.text_encoder import TextEncoderConfig

IDENTITY_BLOCKS = [1, 4]


def model_with_identity_blocks():
    torch.manual_seed(0)
    model = build_transformer("tiny", num_layers=6).eval()
    for i in IDENTITY_BLOCKS:
        zero_block_outputs(model.transformer_blocks[i])
    return model


def calibration(seed=0):
    g = torch.Generator().manual_seed(seed)
    return CalibrationBatch(
        torch.randn(4, 3, 16, 16, generator=g),
        torch.randn(4, 5, 384, generator=g),
        torch.ones(4, 5),
        torch.randn(4, 3, 16, 16, generator=g),
    )


def run(model, seed=3):
    batch = calibration(seed)
    with torch.no_grad():
        return model(batch.latents, encoder_hidden_states=batch.embeds, timestep=torch.tensor([500.0] * 4)).sample


def test_identity_blocks_have_zero_importance_and_are_pruned_first():
    model = model_with_identity_blocks()
    importance = block_importance(model, calibration(), [0.9, 0.5, 0.1])
    for metric in ("cosine", "angular", "loss_delta"):
        scores = importance.per_sigma[metric]
        assert scores.shape == (6, 3)
        assert scores[IDENTITY_BLOCKS].abs().max() < 1e-5, metric  # similarity 1, no loss change
        others = [i for i in range(6) if i not in IDENTITY_BLOCKS]
        assert scores[others].abs().min() > 1e-4, metric
    for metric in ("cosine", "angular"):  # a random block may *lower* the loss when skipped, so not loss_delta
        assert blocks_to_remove(importance.scores[metric], target_depth=4) == IDENTITY_BLOCKS
    assert importance.per_sigma["angular"][0, 0] == pytest.approx(
        (torch.arccos(1 - importance.per_sigma["cosine"][0, 0]) / torch.pi).item(), abs=0.05
    )


def test_pruned_model_equals_the_original_without_those_blocks():
    model = model_with_identity_blocks()
    pruned = prune(model, IDENTITY_BLOCKS)
    assert pruned.config.num_layers == 4 and len(pruned.transformer_blocks) == 4
    assert (run(pruned) - run(model)).abs().max() < 1e-5  # the removed blocks were identities
    reference = keep_blocks(model, [0, 2, 3, 5])
    for a, b in zip(pruned.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    assert len(model.transformer_blocks) == 6  # the original is untouched


def test_importance_is_deterministic():
    model = build_transformer("tiny", num_layers=3).eval()
    a = block_importance(model, calibration(), [0.7, 0.2])
    b = block_importance(model, calibration(), [0.7, 0.2])
    assert all(torch.equal(a.per_sigma[m], b.per_sigma[m]) for m in a.per_sigma)


def test_selection_rules_and_errors():
    scores = torch.tensor([0.1, 0.5, 0.05, 0.9])
    assert blocks_to_remove(scores, 2) == [0, 2]
    assert blocks_to_remove(scores, 2, protect_ends=True) == [1, 2]
    assert select_blocks(6, 4, "last") == [4, 5]
    assert select_blocks(6, 3, "random", seed=1) == select_blocks(6, 3, "random", seed=1)
    with pytest.raises(ValueError, match="target depth 0 is impossible for a 4-block model: use 1..4"):
        blocks_to_remove(scores, 0)
    with pytest.raises(ValueError, match="target depth 5 is impossible"):
        blocks_to_remove(scores, 5)
    with pytest.raises(ValueError, match="cannot remove 3 of 4 blocks while protecting"):
        blocks_to_remove(scores, 1, protect_ends=True)
    with pytest.raises(ValueError, match="unknown pruning criterion 'magnitude'"):
        select_blocks(4, 2, "magnitude")
    with pytest.raises(ValueError, match="out of range"):
        prune(build_transformer("tiny"), [7])


def test_importance_and_prune_commands_write_reports_and_a_diffusers_model(tiny_checkpoint, shapes_dir, tmp_path):
    calibration = ["--shards", f"{shapes_dir}/val-*.tar", "--batch_size", "4", "--num_sigmas", "3"]
    main(["importance", str(tiny_checkpoint), "--out_dir", str(tmp_path / "report"), *calibration])
    report = json.loads((tmp_path / "report/importance.json").read_text())
    assert len(report["scores"]["cosine"]) == 4 and len(report["sigmas"]) == 3
    assert (tmp_path / "report/importance.png").stat().st_size > 10_000
    main(["prune", str(tiny_checkpoint), str(tmp_path / "pruned"), "2", *calibration])
    record = json.loads((tmp_path / "pruned/prune.json").read_text())
    expected = blocks_to_remove(torch.tensor(report["scores"]["cosine"]), 2)
    assert record["removed"] == expected and len(record["kept"]) == 2


def test_importance_on_the_trainer_flags_device_and_precision(tiny_checkpoint, shapes_dir, tmp_path):
    """`--trainer.accelerator cpu` measures what no flag measures here; `bf16-mixed` runs the passes in autocast."""
    calibration = ["--shards", f"{shapes_dir}/val-*.tar", "--batch_size", "4", "--num_sigmas", "2"]
    flags = {"none": [], "cpu": ["--trainer.accelerator", "cpu"], "bf16": ["--trainer.precision", "bf16-mixed"]}
    reports = {}
    for name, extra in flags.items():
        main(["importance", str(tiny_checkpoint), "--out_dir", str(tmp_path / name), *calibration, *extra])
        reports[name] = json.loads((tmp_path / name / "importance.json").read_text())["scores"]
    assert reports["cpu"] == reports["none"]
    assert reports["bf16"].keys() == reports["none"].keys() and reports["bf16"] != reports["none"]
    for metric, scores in reports["none"].items():
        torch.testing.assert_close(torch.tensor(reports["bf16"][metric]), torch.tensor(scores), rtol=0.5, atol=0.05)


def test_importance_and_prune_run_on_precomputed_shards_as_on_raw_ones(tiny_checkpoint, shapes_dir, tmp_path):
    """Calibration batches go through `encode_batch`, so the `precompute` command's shards (latents and caption
    features) calibrate exactly as the raw images and captions they were made from."""
    precomputed = precompute(f"{shapes_dir}/val-*.tar", str(tmp_path / "pre"), encode_text=True, max_length=8)
    reports = {}
    for name, shards in (("raw", f"{shapes_dir}/val-*.tar"), ("pre", f"{precomputed}/val-*.tar")):
        calibration = ["--shards", shards, "--batch_size", "4", "--num_sigmas", "3"]
        main(["importance", str(tiny_checkpoint), "--out_dir", str(tmp_path / name), *calibration])
        reports[name] = json.loads((tmp_path / name / "importance.json").read_text())["scores"]
        main(["prune", str(tiny_checkpoint), str(tmp_path / f"pruned-{name}"), "2", *calibration])
    for metric, scores in reports["raw"].items():
        torch.testing.assert_close(torch.tensor(reports["pre"][metric]), torch.tensor(scores), rtol=1e-4, atol=1e-6)
    assert (tmp_path / "pruned-pre/prune.json").read_text() == (tmp_path / "pruned-raw/prune.json").read_text()


def test_recovery_trains_the_pruned_model_with_distillation(tiny_checkpoint, shapes_dir, tmp_path):
    main(["prune", str(tiny_checkpoint), str(tmp_path / "pruned"), "2", "--criterion", "last"])
    module = PruneRecoveryModule(
        pretrained=str(tmp_path / "pruned"),
        teacher=str(tiny_checkpoint),
        distill_weight=0.5,
        text_encoder=TextEncoderConfig(max_length=8),
        ema_decay=None,
    )
    assert len(module.transformer.transformer_blocks) == 2 and len(module.teacher.transformer_blocks) == 4
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=4, batches_per_epoch=2, num_workers=0))
    assert trainer.callback_metrics["train/distill"] > 0
    trainer.save_checkpoint(tmp_path / "recovered.ckpt")
    keys = torch.load(tmp_path / "recovered.ckpt", weights_only=True)["state_dict"].keys()
    assert not any(k.startswith("teacher.") for k in keys)
    recovered = SanaFlowModule.from_checkpoint(str(tmp_path / "recovered.ckpt"))
    assert len(recovered.transformer.transformer_blocks) == 2
