"""`SanaCLI`: Lightning's `fit` / `validate` / `test` / `predict` on stacked YAML configs, with resume checks."""

import os
import sys
from pathlib import Path

import yaml
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from sana_lightning.resume import (
    checkpoint_hparams,
    find_last_checkpoint,
    learning_rate_differences,
    run_version,
    settings_differences,
)

# `--help` shows the docstring under each dataclass field (`"""..."""` below the field), not only its type.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


class SanaCLI(LightningCLI):
    """LightningCLI with OmegaConf interpolation in configs and TensorBoard logging by default."""

    def __init__(self, args=None, run: bool = True, callbacks: list | None = None) -> None:
        """`callbacks` (instances) join those of the config, e.g. a sweep's trial-pruning callback."""
        super().__init__(
            args=args,
            run=run,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},  # `run` prints the root cause
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "sana", "default_hp_metric": False},
                },
                # Checkpoints written to a temporary name beside the target, fsynced, then renamed.
                "plugins": [{"class_path": "sana_lightning.atomic.AtomicCheckpointIO"}],
            }
            | ({"callbacks": callbacks} if callbacks else {}),
            save_config_kwargs={"overwrite": True},
        )

    def add_arguments_to_parser(self, parser) -> None:
        # One image size for data and model, also when a sweep overrides it on the command line.
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        parser.add_argument(
            "--resume_with_checkpoint_settings",
            type=bool,
            default=False,
            help="With --ckpt_path: take the checkpoint's model settings where they differ from the config "
            "(without it, a difference is an error that lists them)",
        )

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        check_model_image_size(self.config, sys.argv[1:] if args is None else args)

    def _parse_ckpt_path(self) -> None:
        """`--ckpt_path last` is the newest last checkpoint of any version of the run, and a resumed run logs into
        the version it resumes; the checkpoint's model settings replace the config's only when asked."""
        subcommand = self.config.get("subcommand")
        if not subcommand or not self.config[subcommand].get("ckpt_path"):
            return
        args = self.config[subcommand]
        logger = args.trainer.get("logger")
        init = logger.get("init_args") if hasattr(logger, "get") else None
        runs_root = Path(init.save_dir, init.name) if init is not None and init.get("save_dir") else None
        if args.ckpt_path == "last":
            if runs_root is None:
                raise ValueError("--ckpt_path last needs the default TensorBoard logger (or one with save_dir, name)")
            args.ckpt_path = find_last_checkpoint(runs_root)
        elif args.ckpt_path not in ("best", "hpc", "registry") and not Path(args.ckpt_path).exists():
            raise FileNotFoundError(f"--ckpt_path '{args.ckpt_path}' not found: give a checkpoint of this run, or last")
        if runs_root is not None and init.get("version") is None:
            init.version = run_version(args.ckpt_path, runs_root)
        if args.resume_with_checkpoint_settings:  # as Lightning does, but also for a sharded checkpoint folder
            configured = args.model.as_dict()
            hparams = {k: v for k, v in checkpoint_hparams(args.ckpt_path).items() if k != "_instantiator"}
            if "_class_path" in hparams:
                hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
            if taken := settings_differences(self.config[subcommand].model.as_dict(), configured, prefix="model."):
                print(f"taking the checkpoint's settings: {'; '.join(taken)}".replace("config ", "instead of "))

    def _check_checkpoint_settings(self) -> None:
        """The model a checkpoint resumes (or is evaluated) into must be configured as the one that saved it."""
        path = self.config[self.subcommand].get("ckpt_path")
        if not path or not Path(path).exists():
            return
        own = {k: v for k, v in self.model.hparams.items() if not k.startswith("_")}
        saved = {k: v for k, v in checkpoint_hparams(path).items() if not k.startswith("_")}
        differences = settings_differences(saved, own)
        if not self.config[self.subcommand].get("resume_with_checkpoint_settings") and self.subcommand == "fit":
            differences += learning_rate_differences(path, self.model)
        if differences:
            raise ValueError(
                f"--ckpt_path '{path}' was trained with other settings ({'; '.join(differences)}): resume with "
                "the config it was trained with (config.yaml in its run folder), or add "
                "--resume_with_checkpoint_settings true to take the checkpoint's settings"
            )

    def before_fit(self) -> None:
        self._check_checkpoint_settings()
        if self.trainer.fast_dev_run:  # Lightning still saves `save_last` at the end, in the working directory
            for callback in self.trainer.checkpoint_callbacks:
                callback.save_last = False

    before_validate = before_test = before_predict = _check_checkpoint_settings


def check_model_image_size(config, args) -> None:
    """The model's image size is linked to the data's, which replaces it: one given for the model (on the command
    line or in a `--config` file or string) that is not the data's is an error naming the setting to use."""
    subcommand = config.get("subcommand")
    node = config[subcommand] if subcommand else config
    if not isinstance(args, list | tuple) or not node.get("data"):  # a dict / Namespace comes from code
        return
    data = node.data.init_args.image_size
    given = _values(args, "--model.init_args.image_size") + _values(args, "--model.image_size")
    for text in _values(args, "--config") + _values(args, "-c"):
        loaded = yaml.safe_load(Path(text).read_text() if os.path.isfile(text) else text)
        model = loaded.get("model") if isinstance(loaded, dict) else None
        if isinstance(model, dict):
            given += [m["image_size"] for m in (model, model.get("init_args") or {}) if "image_size" in m]
    if any(str(size) != str(data) for size in given):
        raise ValueError(
            f"model image_size {', '.join(map(str, given))} is not the data's {data}: the model takes the data's "
            "image size, so set data.init_args.image_size (--data.init_args.image_size) and drop the model's"
        )


def _values(args, flag: str) -> list[str]:
    """Every value given to `flag` in a command line (`--flag value` or `--flag=value`)."""
    values = []
    for i, arg in enumerate(map(str, args)):
        name, equals, value = arg.partition("=")
        if name == flag:
            values.append(value if equals else (str(args[i + 1]) if i + 1 < len(args) else ""))
    return values
