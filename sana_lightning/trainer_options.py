"""The Trainer flags of the commands that run in Lightning's predict loop (`--trainer.devices 8`), without importing
Lightning until a Trainer is built (so `--help` stays fast)."""

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning as L
    import torch
    from lightning.pytorch.plugins import Precision


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

    def build(self, callbacks: list) -> "L.Trainer":
        """The Trainer; flags this machine cannot run (`--trainer.accelerator cuda` without a GPU) are a one-line
        error naming them."""
        import lightning as L
        from lightning.fabric.utilities.exceptions import MisconfigurationException

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

    def device_and_precision(self) -> tuple["torch.device", "Precision"]:
        """For one-process work (block-importance calibration): the first device of these flags and the precision
        plugin whose `forward_context()` to run in: fp32 (`32-true`, the default) or autocast (`bf16-mixed`,
        `16-mixed`); other precisions would change the weights, so they are an error."""
        from lightning.pytorch.plugins import MixedPrecision, Precision

        trainer = self.build([])
        plugin = trainer.precision_plugin
        if type(plugin) is not Precision and not isinstance(plugin, MixedPrecision):
            raise ValueError(
                f"--trainer.precision {self.precision}: calibration runs in fp32 or autocast: use 32-true, bf16-mixed "
                "or 16-mixed"
            )
        return trainer.strategy.root_device, plugin


def trainer_options(device: str | None, trainer: TrainerOptions | None) -> TrainerOptions:
    """A command's Trainer flags from its `--device` (short for one device of that kind: `cuda`, `cuda:1`) or its
    `--trainer.*` flags, not both; neither: `TrainerOptions()`'s defaults."""
    if device is not None and trainer is not None:
        raise ValueError(f"--device {device} and --trainer.*: give the device as --trainer.accelerator only")
    if trainer is not None:
        return trainer
    if device is None:
        return TrainerOptions()
    kind, _, index = device.partition(":")
    return TrainerOptions(accelerator=kind, devices=f"{index}," if index else 1)
