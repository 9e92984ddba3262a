"""`SanaFlowModule`: flow-matching training of diffusers' `SanaTransformer2DModel` with frozen text/image codecs."""

import json
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sana_lightning.autoencoder import AutoencoderConfig
from sana_lightning.callbacks.preemption import PreemptionCheckpoint
from sana_lightning.codecs import FrozenCodecs
from sana_lightning.factory import TransformerSource, resolve_on_meta, resolve_transformer
from sana_lightning.flow import (
    FlowConfig,
    add_noise,
    flow_loss,
    sample_sigmas,
    timesteps_from_sigmas,
    velocity,
)
from sana_lightning.growth import GrowthConfig
from sana_lightning.materialize import copy_local_parts
from sana_lightning.nonfinite import NonFiniteGuard
from sana_lightning.resume import repair_epoch_end_checkpoint
from sana_lightning.sampling import SamplerConfig, denoise, initial_noise
from sana_lightning.schedules import check_schedule_length
from sana_lightning.sharding import ShardingConfig, is_sharded, mesh_device, shard_transformer
from sana_lightning.text_encoder import TextEncoderConfig


def _config(cls, value):
    """A config dataclass from itself, a dict (as stored in checkpoints) or None (defaults)."""
    return cls(**value) if isinstance(value, dict) else value or cls()


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class SanaFlowModule(FrozenCodecs, NonFiniteGuard, L.LightningModule):
    """Rectified-flow (velocity) training of Sana with caption dropout, EMA weights and fixed-noise validation.

    The transformer comes from a `preset` (+ `transformer` overrides) or `pretrained` weights, grown first when
    `growth` is given: see `sana_lightning.factory.TransformerSource`. The text encoder and autoencoder are loaded
    from their paths and never stored in checkpoints.

    Args:
        preset: Named size of a randomly initialised transformer (tiny, small, sana-1.6b, sana-4.8b, ...); default
            small when no pretrained is given.
        transformer: SanaTransformer2DModel options over the preset (e.g. num_layers).
        pretrained: Start from these weights: a checkpoint (a glob picks the newest), a consolidated FSDP checkpoint
            or a diffusers directory (an exported, pruned or official Sana model).
        pretrained_weights: ema (falls back to the trained weights) or raw weights of a pretrained checkpoint.
        growth: Grow pretrained in depth first (SANA 1.5 depth growth: target_layers, strategy, drop_last, ...).
        text_encoder: The frozen text encoder (path empty: the embedded MiniLM; Gemma-2-2B-IT for real Sana).
        autoencoder: The frozen autoencoder (path empty: pixel space; DC-AE f32c32 for real Sana).
        flow: Training noise levels: logit-normal mean / std and the flow shift.
        sampler: Solver, steps, guidance and shift of sampling (validation grids, generate, scale).
        image_size: Image side in pixels (linked to the data's image_size).
        caption_dropout: Probability of training on the empty caption (classifier-free guidance).
        ema_decay: Decay of the EMA weights (null: none).
        optimizer: The optimizer (AdamW, CAME, CAME-8bit ...), built on the module's parameter groups.
        lr_scheduler: A learning-rate scheduler, stepped every optimizer step.
        sharding: FSDP2 settings under ModelParallelStrategy / FSDP2Strategy (dtypes, activation checkpointing,
            meta_init: build on the meta device and fill each rank's shard only).
        seed: Seeds the training noise, keyed by (rank, epoch, batch), so a resumed run draws the same noise.
    """

    def __init__(
        self,
        preset: str | None = None,
        transformer: dict[str, Any] | None = None,
        pretrained: str | None = None,
        pretrained_weights: str = "ema",
        growth: GrowthConfig | dict | None = None,
        text_encoder: TextEncoderConfig | dict | None = None,
        autoencoder: AutoencoderConfig | dict | None = None,
        flow: FlowConfig | dict | None = None,
        sampler: SamplerConfig | dict | None = None,
        image_size: int = 32,
        caption_dropout: float = 0.1,
        ema_decay: float | None = 0.999,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        sharding: ShardingConfig | dict | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        text_encoder = _config(TextEncoderConfig, text_encoder)
        autoencoder = _config(AutoencoderConfig, autoencoder)
        self.flow = _config(FlowConfig, flow)
        self.sampler = _config(SamplerConfig, sampler).with_default_shift(self.flow.shift)
        self.sharding = _config(ShardingConfig, sharding)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # Plain dicts in the hyper-parameters (also those of subclasses) keep checkpoints `weights_only` loadable.
        self.hparams.update({k: asdict(v) for k, v in self.hparams.items() if is_dataclass(v)})
        self.hparams["sampler"] = asdict(self.sampler)  # the shift it samples at, as checkpoints before `null` saved
        self.setup_codecs(text_encoder, autoencoder)
        growth = _config(GrowthConfig, growth) if growth is not None else None
        source = TransformerSource(preset, transformer, pretrained, pretrained_weights, growth)
        latent_default = {"sample_size": image_size // self.autoencoder.downsample_factor}
        io = self.io_channels()
        self.lazy_weights = None  # with meta_init: what fills the meta-built transformer in configure_model
        if self.sharding.meta_init:
            self.transformer, self.block_origins, self.lazy_weights = resolve_on_meta(source, io, latent_default, seed)
        else:
            self.transformer, self.block_origins = resolve_transformer(source, io, latent_default, seed)
        self.latent_size = self._latent_size(image_size)
        self.ema = (
            AveragedModel(self.transformer, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            if ema_decay
            else None
        )
        if self.ema is not None:
            self.ema.requires_grad_(False)  # averaged, never trained
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.skipped_samples = 0

    def _latent_size(self, image_size: int) -> int:
        multiple = self.transformer.config.patch_size * self.autoencoder.downsample_factor
        if image_size <= 0 or image_size % multiple:
            raise ValueError(
                f"image_size {image_size} is not divisible by patch_size x autoencoder downsampling = {multiple}: "
                f"use a multiple of {multiple} (e.g. {max(multiple, round(max(image_size, 1) / multiple) * multiple)})"
            )
        return image_size // self.autoencoder.downsample_factor

    # ----------------------------------------------------------------------------------------------- training

    def noise_generator(self, *keys: int) -> torch.Generator:
        """A CPU generator seeded by (seed, *keys): the same draws on any device and after any resume."""
        return torch.Generator().manual_seed(hash((self.hparams.seed, *keys)) & 0x7FFF_FFFF_FFFF_FFFF)

    def flow_inputs(
        self, batch: dict, generator: torch.Generator, sigmas: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Everything one training step feeds the transformer; all randomness (dropout, noise, and the noise levels
        unless `sigmas` are given) drawn from `generator`."""
        x0, embeds, mask = self.encode_batch(batch, generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        sigmas = sample_sigmas(len(x0), self.flow, generator) if sigmas is None else sigmas
        return dict(x0=x0, noise=noise, sigmas=sigmas, noisy=add_noise(x0, noise, sigmas), embeds=embeds, mask=mask)

    def flow_step(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The training loss of one batch."""
        inputs = self.flow_inputs(batch, generator)
        return flow_loss(self.prediction(self.transformer, inputs), inputs["x0"], inputs["noise"])

    @staticmethod
    def prediction(transformer, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """`transformer`'s velocity on the noisy inputs of `flow_inputs`."""
        timesteps = timesteps_from_sigmas(inputs["sigmas"])
        return velocity(transformer, inputs["noisy"], timesteps, inputs["embeds"], inputs["mask"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # The stream's own (epoch, index) of the batch keys its noise, so a resumed run draws the same noise.
        epoch, index = batch.get("position", (self.current_epoch, batch_idx))
        loss = self.flow_step(batch, self.noise_generator(self.global_rank, epoch, index))
        self._last_step = {"loss": loss.detach(), "keys": batch.get("key")}
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        if batch.get("skipped"):
            self.skipped_samples += int(batch["skipped"])
            self.log("data/skipped_samples", float(self.skipped_samples), reduce_fx="sum", sync_dist=True)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer step, then the EMA update: both are in any checkpoint written after the step."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.transformer)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.fixed_noise_loss(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.fixed_noise_loss(batch, batch_idx, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Images `[B, 3, H, W]` in [0, 1] for the batch's captions (seeds: batch index x batch size + i)."""
        captions = batch["caption"]
        return self.generate(captions, seeds=batch_idx * len(captions))

    def fixed_noise_loss(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Loss on fixed noise and evenly spaced noise levels, so curves compare across runs and steps."""
        size = len(batch["caption"])
        sigmas = (torch.arange(size) + 0.5) / size
        inputs = self.flow_inputs(batch, self.noise_generator(-1, batch_idx), sigmas)
        for name, transformer in self.transformers().items():
            loss = flow_loss(self.prediction(transformer, inputs), inputs["x0"], inputs["noise"])
            self.log(f"{stage}/{name}", loss, prog_bar=name == "loss", sync_dist=True, batch_size=size)

    def transformers(self) -> dict[str, torch.nn.Module]:
        """The trained weights, and their EMA when kept, by the name their validation loss is logged under."""
        return {"loss": self.transformer} | ({"loss_ema": self.ema.module} if self.ema is not None else {})

    def configure_model(self) -> None:
        """Under `ModelParallelStrategy` (which sets `device_mesh`): FSDP2-shard the backbone and its EMA. Then, when
        they were built on the meta device (`sharding.meta_init`), fill each rank's shard of the backbone and copy
        it into the EMA's (sharded alike)."""
        mesh = None if self.device_mesh is None else self.device_mesh["data_parallel"]
        if mesh is not None and not is_sharded(self.transformer):
            if self.device_mesh["tensor_parallel"].size() > 1:
                raise ValueError("Sana is sharded with FSDP only: use sana_lightning.sharding.FSDP2Strategy")
            shard_transformer(self.transformer, mesh, self.sharding)
            if self.ema is not None:
                shard_transformer(self.ema.module, mesh, replace(self.sharding, activation_checkpointing=False))
        if self.lazy_weights is not None and next(self.transformer.parameters()).is_meta:
            self.lazy_weights.materialize(self.transformer, mesh_device(mesh))
            if self.ema is not None:
                copy_local_parts(self.ema.module, self.transformer, mesh_device(mesh))

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups; a group's `lr_scale` multiplies the configured learning rate."""
        return [{"params": list(self.transformer.parameters())}]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        check_schedule_length(scheduler, self._trainer.max_steps if self._trainer is not None else -1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------ checkpoints

    def configure_callbacks(self) -> list[L.Callback]:
        """A checkpoint at the next step boundary on SIGTERM / SIGUSR1 (preemption), in every run."""
        return [PreemptionCheckpoint()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None:
            self._check_finite_weights()
        checkpoint["transformer_config"] = dict(self.transformer.config)  # rebuilds it without this code's presets
        checkpoint["skipped_samples"] = self.skipped_samples

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_samples = checkpoint.get("skipped_samples", 0)
        repair_epoch_end_checkpoint(checkpoint)

    # ------------------------------------------------------------------------------------------------- sampling

    SETTINGS = ("text_encoder", "autoencoder", "flow", "sampler", "image_size", "caption_dropout", "seed")
    """The hyper-parameters that rebuild a trained model for sampling and analysis (saved by `export` too)."""

    @staticmethod
    def from_checkpoint(path: str, weights: str = "ema", **settings) -> "SanaFlowModule":
        """Any sana-lightning checkpoint (flow, growth, recovery) as a plain module for sampling and analysis:
        its transformer (EMA weights by default) and the encoders it was trained with. A diffusers directory (an
        exported model or a Sana pipeline) takes these settings from the `sana_lightning.json` that `export` writes
        or from `settings` (e.g. `text_encoder={"path": ...}`, `autoencoder=...`, `image_size=...`)."""
        from sana_lightning.checkpoints import read_checkpoint, resolve_path

        path = resolve_path(path)
        if Path(path).is_dir():
            saved = Path(path, "sana_lightning.json")
            hparams = json.loads(saved.read_text()) if saved.exists() else {}
        else:
            hparams = read_checkpoint(path)["hyper_parameters"]
        hparams |= {k: v for k, v in settings.items() if v is not None}
        chosen = {k: hparams[k] for k in SanaFlowModule.SETTINGS if k in hparams}
        return SanaFlowModule(pretrained=path, pretrained_weights=weights, ema_decay=None, **chosen).eval()

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int] | int = 0,
        sampler: SamplerConfig | None = None,
        use_ema: bool = True,
        batch_size: int = 64,
        progress: bool = False,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images `[N, 3, H, W]` in [0, 1] for `prompts`; sample i starts from the noise of seed `seeds[i]`, or from
        `noise[i]` when given (`[N, C, h, w]` latents, e.g. a search's perturbed noise)."""
        if noise is not None and len(noise) != len(prompts):
            raise ValueError(f"{len(noise)} noise tensors for {len(prompts)} prompts: give one a prompt")
        sampler = (sampler or self.sampler).with_default_shift(self.flow.shift)
        transformer = self.ema.module if use_ema and self.ema is not None else self.transformer
        if noise is None:
            noise = initial_noise(len(prompts), self.autoencoder.latent_channels, self.latent_size, seeds)
        null_embeds, null_mask = self.text_encoder([""])
        images = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            embeds, mask = self.text_encoder(chunk)
            own = noise[start : start + batch_size].to(self.device, embeds.dtype)
            latents = denoise(transformer, own, embeds, mask, null_embeds, null_mask, sampler, progress)
            images.append(self.autoencoder.decode(latents).float().add(1).div(2))
        return torch.cat(images)
