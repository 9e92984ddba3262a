import glob
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sana_lightning.data.datamodule import ShardDataModule
from sana_lightning.growth_module import GrowthModule
from sana_lightning.lightning_cli import SanaCLI
from sana_lightning.module import SanaFlowModule
from sana_lightning.presets import build_transformer
from sana_lightning.prune_module import PruneRecoveryModule
from sana_lightning.sampling import SamplerConfig
from sana_lightning.text_encoder import TextEncoderConfig

CONFIGS = Path(__file__).parents[1] / "configs"


def tiny_module(**kwargs) -> SanaFlowModule:
    optimizer = lambda params: torch.optim.AdamW(params, lr=1e-3)  # noqa: E731
    kwargs = {"preset": "tiny"} | kwargs if "pretrained" not in kwargs else kwargs
    return SanaFlowModule(text_encoder=TextEncoderConfig(max_length=8), ema_decay=0.9, optimizer=optimizer, **kwargs)


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


def fit(shapes_dir, tmp_path, max_epochs, ckpt_path=None):
    recorder = LossRecorder()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, checkpoint],
        gradient_clip_val=1.0,
    )
    data = ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=4, batches_per_epoch=3, num_workers=0)
    L.seed_everything(0)  # identical initial weights in every run
    module = tiny_module()
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return recorder.losses, module


def test_resume_from_last_checkpoint_reproduces_the_uninterrupted_run(shapes_dir, tmp_path):
    straight, straight_module = fit(shapes_dir, tmp_path / "a", max_epochs=2)
    first, _ = fit(shapes_dir, tmp_path / "b", max_epochs=1)
    second, resumed_module = fit(shapes_dir, tmp_path / "c", max_epochs=2, ckpt_path=tmp_path / "b/ckpt/last.ckpt")
    assert len(straight) == 6 and len(first) == 3 and len(second) == 3
    assert torch.equal(torch.stack(straight), torch.stack(first + second))
    assert straight[0] != straight[3]  # epochs see different data and noise
    for a, b in zip(straight_module.state_dict().values(), resumed_module.state_dict().values()):
        assert torch.equal(a, b)  # weights, EMA weights and its update count all match


def test_checkpoints_hold_no_frozen_encoder_weights_and_reload(shapes_dir, tmp_path):
    _, module = fit(shapes_dir, tmp_path, max_epochs=1)
    checkpoint = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=False)
    keys = checkpoint["state_dict"].keys()
    assert not any(k.startswith(("text_encoder.", "autoencoder.")) for k in keys)
    assert any(k.startswith("ema.module.") for k in keys) and checkpoint["state_dict"]["ema.n_averaged"] == 3
    reloaded = SanaFlowModule.load_from_checkpoint(tmp_path / "ckpt/last.ckpt")
    for key, value in module.transformer.state_dict().items():
        assert torch.equal(value, reloaded.transformer.state_dict()[key])
    images = reloaded.generate(["a photo of a red circle", "a photo of a blue square"], seeds=[0, 1])
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(
        images, reloaded.generate(["a photo of a red circle", "a photo of a blue square"], [0, 1])
    )


def test_ema_tracks_the_weights_once_per_optimizer_step():
    module = tiny_module()
    with torch.no_grad():
        for p in module.transformer.parameters():
            p.add_(1.0)
    module.ema.update_parameters(module.transformer)  # the first update copies
    ema_param, param = next(module.ema.module.parameters()), next(module.transformer.parameters())
    torch.testing.assert_close(ema_param, param)
    with torch.no_grad():
        param.add_(1.0)
    module.ema.update_parameters(module.transformer)
    torch.testing.assert_close(ema_param, param - 0.9)  # decay 0.9: moves a tenth of the way


def test_pretrained_transformer_from_a_local_diffusers_directory(tmp_path):
    source = build_transformer("tiny", caption_channels=384)
    source.save_pretrained(tmp_path / "pipeline/transformer")
    module = tiny_module(pretrained=str(tmp_path / "pipeline"))
    for key, value in source.state_dict().items():
        assert torch.equal(value, module.transformer.state_dict()[key])
    build_transformer("tiny", caption_channels=2304).save_pretrained(tmp_path / "gemma-sized")
    with pytest.raises(ValueError, match="has caption_channels=2304 but the text encoder / autoencoder give 384"):
        tiny_module(pretrained=str(tmp_path / "gemma-sized"))
    with pytest.raises(FileNotFoundError, match="'.*missing' does not exist: give a sana-lightning checkpoint"):
        tiny_module(pretrained=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(preset="sana-9b"), ValueError, "unknown preset 'sana-9b'"),
        (
            dict(image_size=31),
            ValueError,
            "image_size 31 is not divisible by patch_size x autoencoder downsampling = 2: use a multiple of 2",
        ),
        (
            dict(transformer={"caption_channels": 2304}),
            ValueError,
            "transformer.caption_channels=2304 does not match the encoders \\(384\\)",
        ),
        (
            dict(text_encoder=TextEncoderConfig(path="/models/gemma-2-2b-it")),
            FileNotFoundError,
            "text encoder path '/models/gemma-2-2b-it' not found",
        ),
    ],
)
def test_bad_model_configuration_is_a_one_line_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        SanaFlowModule(**{"preset": "tiny", **kwargs})


def test_no_transformer_source_setting_is_silently_ignored(tmp_path):
    """One TransformerSource: a setting the chosen source would not use is an error naming it."""
    build_transformer("tiny", caption_channels=384).save_pretrained(tmp_path / "tiny")
    pretrained = str(tmp_path / "tiny")
    cases = [
        (SanaFlowModule, dict(pretrained=pretrained, preset="small"), "fixes the architecture: remove preset='small'"),
        (SanaFlowModule, dict(pretrained=pretrained, transformer={"num_layers": 3}), "remove transformer="),
        (SanaFlowModule, dict(preset="tiny", growth={"target_layers": 4}), "growth needs pretrained"),
        (GrowthModule, dict(pretrained=pretrained), "GrowthModule needs pretrained .* and growth"),
        (PruneRecoveryModule, dict(preset="tiny"), "PruneRecoveryModule needs pretrained"),
        (PruneRecoveryModule, dict(pretrained=pretrained, teacher=pretrained), "distillation needs both a teacher"),
        (PruneRecoveryModule, dict(pretrained=pretrained, distill_weight=1.0), "distillation needs both a teacher"),
    ]
    for cls, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            cls(text_encoder=TextEncoderConfig(max_length=8), **kwargs)
    growth = {"target_layers": 4, "drop_last": 0}
    grown = SanaFlowModule(pretrained=pretrained, growth=growth, text_encoder={"max_length": 8})
    assert grown.block_origins == [0, 1, None, None] and grown.transformer.config.num_layers == 4
    assert SanaFlowModule(text_encoder={"max_length": 8}).transformer.config.num_layers == 6  # default preset: small


def test_cli_fit_writes_tensorboard_losses_samples_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    SanaCLI(args=["fit", "--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "tiny.yaml")])
    run = tmp_path / "runs/sana/version_0"
    events = EventAccumulator(glob.glob(str(run / "events*"))[0], size_guidance={"images": 0})
    events.Reload()
    assert {"train/loss", "val/loss", "val/loss_ema"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("train/loss")) == 8
    assert [e.step for e in events.Images("samples")] == [4, 8]
    assert (run / "checkpoints/last.ckpt").exists() and (run / "samples/step_0000008.png").exists()


def test_cli_sweep_stacks_configs_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "tiny.yaml")]
    cli = SanaCLI(
        args=[*args, "--model.init_args.optimizer.init_args.lr=0.02", "--data.init_args.batch_size=3"], run=False
    )
    assert cli.model.hparams.preset == "tiny" and cli.datamodule.batch_size == 3
    assert cli.model.optimizer_factory(cli.model.transformer.parameters()).param_groups[0]["lr"] == 0.02
    assert cli.model.latent_size == 32 and cli.model.sampler.shift == cli.model.flow.shift == 1.0  # interpolated


def test_a_sampler_given_to_generate_without_a_shift_samples_at_the_training_shift(tiny_checkpoint):
    module = SanaFlowModule.from_checkpoint(str(tiny_checkpoint))
    own = SamplerConfig(steps=2, shift=module.flow.shift)
    prompt = ["a photo of a red circle"]
    images = module.generate(prompt, [3], own)
    torch.testing.assert_close(module.generate(prompt, [3], replace(own, shift=None)), images)
    assert not torch.allclose(module.generate(prompt, [3], replace(own, shift=own.shift + 2)), images)  # it matters


def test_cli_validate_test_and_predict_from_a_fit_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = ["--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "tiny.yaml"), "--trainer.callbacks=[]"]
    SanaCLI(args=["fit", *configs, "--trainer.max_steps=2"])
    checkpoint = str(next(tmp_path.glob("runs/sana/version_0/checkpoints/*.ckpt")))
    for command, metric in (("validate", "val/loss"), ("test", "test/loss")):
        cli = SanaCLI(args=[command, *configs, f"--ckpt_path={checkpoint}"])
        assert metric in cli.trainer.callback_metrics
    cli = SanaCLI(args=configs, run=False)
    images = cli.trainer.predict(cli.model, cli.datamodule, ckpt_path=checkpoint)
    assert len(images) == 1 and images[0].shape == (8, 3, 32, 32) and 0 <= images[0].min() <= images[0].max() <= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [
                "fit",
                *("--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "grow.yaml")),
                "--model.init_args.pretrained=nope.ckpt",
            ],
            "error: 'nope.ckpt' does not exist",
        ),
        (
            ["fit", "--config", str(CONFIGS / "base.yaml"), "--data.init_args.image_size=33"],
            "error: image_size 33 is not divisible",
        ),
        (
            ["fit", "--config", str(CONFIGS / "base.yaml"), "--trainer.max_stepz=3"],
            "error: unrecognized arguments: --trainer.max_stepz=3",
        ),
    ],
)
def test_command_line_errors_are_one_line(argv, message, monkeypatch, tmp_path):
    from sana_lightning.cli import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["sana-lightning", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert str(exit_info.value.code).startswith(message) and "\n" not in str(exit_info.value.code)


def test_non_finite_training_stops_before_the_update_and_keeps_the_last_good_checkpoint(shapes_dir, tmp_path):
    """lr=1e6 drives the loss to NaN/Inf: training stops in one line naming the step, the batch's samples and the
    last good checkpoint; no checkpoint is written from the non-finite state and `last.ckpt` still loads."""
    from sana_lightning.nonfinite import NonFiniteError

    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(
        max_steps=200, accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[checkpoint]
    )
    data = ShardDataModule(f"{shapes_dir}/train-*.tar", batch_size=4, batches_per_epoch=10, num_workers=0)
    module = SanaFlowModule(
        preset="tiny", text_encoder=TextEncoderConfig(max_length=8), optimizer=lambda p: torch.optim.SGD(p, lr=1e6)
    )
    with pytest.raises(NonFiniteError) as error:
        trainer.fit(module, data)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    step = last["global_step"] + 1
    message = str(error.value)
    assert message.startswith(f"non-finite training at step {step}: loss ") and "\n" not in message
    assert f"(batch: {shapes_dir}/train-" in message and f"last good checkpoint: {tmp_path}/" in message
    assert f"--model.init_args.pretrained={tmp_path}/" in message
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not list(tmp_path.glob(f"*step={step}*")) and 1 < step < 200
    assert all(torch.isfinite(p).all() for p in module.transformer.parameters())  # the update was not applied
    with torch.no_grad():
        next(module.transformer.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match=f"refusing to save a checkpoint at step {step - 1}: non-finite weights"):
        trainer.save_checkpoint(tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()
