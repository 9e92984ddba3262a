"""Image generation in Lightning's predict loop: one (prompt, seed) request per image, split over the devices the
Trainer is given, each image written to GenEval's folder layout as soon as it is made; a rerun makes only what is
missing. Devices, strategy and precision are the Trainer's own flags."""

import json
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from sana_lightning.eval.folder import ImageRequest, write_image
from sana_lightning.images import to_pil
from sana_lightning.module import SanaFlowModule
from sana_lightning.sampling import SamplerConfig
from sana_lightning.trainer_options import TrainerOptions


def at_least(items: list, count: int) -> list:
    """`items`, the last one repeated up to `count`: Lightning's predict sampler needs an item for every rank (a
    repeated job is gathered once; a repeated image is written twice with the same bytes)."""
    return items + items[-1:] * max(0, count - len(items))


def as_list(items: list) -> list:
    """A DataLoader `collate_fn` keeping a batch as the list of its items."""
    return items


class HostModule(L.LightningModule):
    """A predict-loop module for objects that are not torch modules but hold some (a detector, a judge): their torch
    models become submodules, so Lightning moves them to the rank's device, and on predict start each object with a
    `device` attribute is told its new device (CLIP text embeddings cached on another device are dropped)."""

    def __init__(self, *hosts: object) -> None:
        super().__init__()
        self.hosts = hosts
        self.models = torch.nn.ModuleList(
            value for host in hosts for value in vars(host).values() if isinstance(value, torch.nn.Module)
        )

    def on_predict_start(self) -> None:
        for host in self.hosts:
            if hasattr(host, "device"):
                host.device = self.device
            cached = getattr(host, "_color_embeddings", None)
            if isinstance(cached, dict):
                cached.clear()


class GatheringWriter(BasePredictionWriter):
    """Gathers a predict loop's records on rank 0. `predict_step` returns (job number, record) pairs, a record being a
    dataclass of `kind`; each rank appends its batches' records as JSON lines to `<folder>/.<name>-rank<r>.jsonl`, and
    `gather` (rank 0, once every rank is done) reads and deletes every part and returns the records in job order, so
    1 or 8 devices give the same list."""

    def __init__(self, folder: str | Path, name: str, kind: type) -> None:
        super().__init__(write_interval="batch")
        self.folder, self.name, self.kind = Path(folder), name, kind

    def part(self, rank: int) -> Path:
        return self.folder / f".{self.name}-rank{rank}.jsonl"

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        with open(self.part(trainer.global_rank), "a") as file:
            file.writelines(json.dumps({"job": number, **asdict(record)}) + "\n" for number, record in prediction)

    def gather(self, world_size: int) -> list:
        records = {}
        for rank in range(world_size):  # a rank with no job (fewer jobs than ranks) wrote no part
            part = self.part(rank)
            for line in part.read_text().splitlines() if part.exists() else []:
                record = json.loads(line)
                records[record.pop("job")] = record
            part.unlink(missing_ok=True)
        return [self.kind(**records[number]) for number in sorted(records)]


def predict_on_devices(
    module: L.LightningModule,
    jobs: list,
    folder: str | Path,
    name: str,
    kind: type,
    batch_size: int,
    trainer: TrainerOptions,
) -> list | None:
    """Run `module`'s predict step on the numbered `jobs` (batches of (job number, job) items) in the predict loop of
    a Trainer with `trainer`'s flags, split over its devices; the records (dataclasses of `kind`) in job order on
    rank 0, None on the other ranks. Parts are written under `folder` as `name`."""
    writer = GatheringWriter(folder, name, kind)
    built = trainer.build([writer])
    loader = DataLoader(at_least(list(enumerate(jobs)), built.world_size), batch_size=batch_size, collate_fn=as_list)
    writer.folder.mkdir(parents=True, exist_ok=True)
    writer.part(built.global_rank).unlink(missing_ok=True)  # a stale part of an interrupted run
    built.predict(module, loader, return_predictions=False)
    built.strategy.barrier(f"{name} parts written")
    results = writer.gather(built.world_size) if built.is_global_zero else None
    built.strategy.barrier(f"{name} parts read")
    return results


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
    runner = trainer.build([writer])
    loader = DataLoader(at_least(requests, runner.world_size), batch_size=batch_size, collate_fn=as_list)
    runner.predict(ImageGenerator(model, sampler, batch_size), loader, return_predictions=False)
    runner.strategy.barrier("images written")
    return writer.written
