"""Image generation in Lightning's predict loop: one (prompt, seed) request per image, split over the devices the
Trainer is given, each image written to GenEval's folder layout as soon as it is made; a rerun makes only what is
missing. Devices, strategy and precision are the Trainer's own flags."""

from dataclasses import asdict, dataclass

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.plugins import MixedPrecision, Precision
from torch.utils.data import DataLoader

from sana_lightning.eval.folder import ImageRequest, write_image
from sana_lightning.images import to_pil
from sana_lightning.module import SanaFlowModule
from sana_lightning.sampling import SamplerConfig


@dataclass
class TrainerOptions:
    """The Trainer flags of a generation command (`--trainer.devices 8 --trainer.precision bf16-mixed`)."""

    accelerator: str = "auto"
    devices: int | str = "auto"
    """Devices per node; with several, requests are split over them (`--trainer.strategy ddp`)."""
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    """e.g. `bf16-mixed` on GPUs."""

    def build(self, callbacks: list[L.Callback]) -> L.Trainer:
        """The Trainer; flags this machine cannot run (`--trainer.accelerator cuda` without a GPU) are a one-line
        error naming them."""
        try:
            return L.Trainer(
                **asdict(self),
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                callbacks=callbacks,
            )
        except (MisconfigurationException, ValueError) as error:
            message = " ".join(str(error).split())
            flags = asdict(self)
            named = [name for name in flags if name in message.lower()] or list(flags)
            shown = " ".join(f"--trainer.{name} {flags[name]}" for name in named)
            fix = ": pick one this machine has (e.g. --trainer.accelerator cpu)" if "accelerator" in named else ""
            raise ValueError(f"{shown}: {message}{fix}") from None

    def device_and_precision(self) -> tuple[torch.device, Precision]:
        """For one-process work (block-importance calibration): the first device of these flags and the precision
        plugin whose `forward_context()` to run in: fp32 (`32-true`, the default) or autocast (`bf16-mixed`,
        `16-mixed`); other precisions would change the weights, so they are an error."""
        trainer = self.build([])
        plugin = trainer.precision_plugin
        if type(plugin) is not Precision and not isinstance(plugin, MixedPrecision):
            raise ValueError(
                f"--trainer.precision {self.precision}: calibration runs in fp32 or autocast: use 32-true, bf16-mixed "
                "or 16-mixed"
            )
        return trainer.strategy.root_device, plugin


def as_list(items: list) -> list:
    """A DataLoader `collate_fn` keeping a batch as the list of its items."""
    return items


class ImageGenerator(L.LightningModule):
    """Predict step: the images of a batch of requests. Every forward has `batch_size` samples (a short last batch is
    padded), so an image's pixels do not depend on which requests share its batch: 1 or 8 devices make the same
    files."""

    def __init__(self, model: SanaFlowModule, sampler: SamplerConfig, batch_size: int) -> None:
        super().__init__()
        self.model = model
        self.sampler = sampler
        self.batch_size = batch_size

    def predict_step(self, batch: list[ImageRequest], batch_idx: int) -> torch.Tensor:
        padded = batch + [batch[-1]] * (self.batch_size - len(batch))
        images = self.model.generate(
            [r.prompt for r in padded], [r.seed for r in padded], self.sampler, batch_size=len(padded)
        )
        return images[: len(batch)]


class GenEvalWriter(BasePredictionWriter):
    """Writes each predicted image to its request's path in GenEval's layout as its batch ends."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        for request, image in zip(batch, prediction):
            write_image(request, to_pil(image))
        self.written += len(batch)


def generate_requests(
    model: SanaFlowModule,
    requests: list[ImageRequest],
    sampler: SamplerConfig,
    batch_size: int,
    trainer: TrainerOptions,
) -> int:
    """Make and write `requests` in the predict loop of a Trainer with `trainer`'s flags (split over its devices);
    returns how many images this process made, once every process has written its share."""
    if not requests:
        return 0
    writer = GenEvalWriter()
    loader = DataLoader(requests, batch_size=batch_size, collate_fn=as_list)
    runner = trainer.build([writer])
    runner.predict(ImageGenerator(model, sampler, batch_size), loader, return_predictions=False)
    runner.strategy.barrier("images written")
    return writer.written
