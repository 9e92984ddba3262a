"""Every YAML under configs/ parses and instantiates against the code, so configs cannot drift."""

import inspect
from pathlib import Path

import docstring_parser
import pytest
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from sana_lightning.cli import COMMANDS, command, main
from sana_lightning.lightning_cli import SanaCLI
from sana_lightning.module import SanaFlowModule
from sana_lightning.presets import build_transformer

CONFIGS = Path(__file__).parents[1] / "configs"
# Partial configs, stacked on base.yaml.
OVERLAYS = {"tiny.yaml", "came8bit.yaml", "fsdp2.yaml", "precomputed.yaml", "grow.yaml", "recover.yaml", "report.yaml"}
# Configs of data/model commands rather than of `fit`.
COMMAND_CONFIGS = {"prune.yaml": "prune", "scale.yaml": "scale", "scale_paper.yaml": "scale"}
# Need GPUs and local production models: parsed, not instantiated.
GPU_CONFIGS = {"fsdp.yaml", "grow_4.8b.yaml", "qknorm_1.6b.yaml"}


class ParseOnly(SanaCLI):
    """Checks every class path and argument against the code's signatures without building anything."""

    def instantiate_classes(self) -> None:
        pass


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    """A checkpoint of the `small` preset in sana-lightning's format, for configs that grow or prune a source."""
    path = tmp_path_factory.mktemp("source") / "small.ckpt"
    model = build_transformer("small", caption_channels=384)
    state = {f"transformer.{k}": v for k, v in model.state_dict().items()}
    torch.save({"transformer_config": dict(model.config), "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def small_diffusers_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pruned") / "small"
    build_transformer("small", caption_channels=384, num_layers=3).save_pretrained(path)
    return path


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_config_parses_against_the_code(config, small_source, small_diffusers_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if config.name in COMMAND_CONFIGS:
        parser = ArgumentParser()
        parser.add_argument("--config", action=ActionConfigFile)
        parser.add_function_arguments(command(COMMAND_CONFIGS[config.name]))
        parsed = parser.parse_args(["--config", str(config)])
        assert parsed.checkpoint and parsed.out_dir  # the command's required arguments come from the config
        return
    stacked = config.name in OVERLAYS or config.parent.name == "strategy"
    args = ["--config", str(CONFIGS / "base.yaml")] * stacked + ["--config", str(config)]
    if config.name in GPU_CONFIGS:
        cli = ParseOnly(args=args, run=False)
        assert cli.config.trainer.strategy.class_path.endswith(("FSDPStrategy", "FSDP2Strategy"))
        return
    text = config.read_text()
    pretrained = small_diffusers_dir if "PruneRecoveryModule" in text else small_source
    for key, value in (("pretrained", pretrained), ("teacher", small_source)):
        if f"    {key}:" in text:
            args.append(f"--model.init_args.{key}={value}")
    cli = SanaCLI(args=args, run=False)
    assert isinstance(cli.model, SanaFlowModule) and cli.trainer is not None


def test_the_sampler_follows_a_command_line_flow_shift_and_overlays_keep_the_schedule(capsys):
    """base.yaml's sampler takes the flow's shift (it used to copy the file's by interpolation: a run with
    `--model.init_args.flow.shift 3` sampled at shift 1), and grow.yaml stacked on report.yaml keeps its one-cycle."""
    args = [f"--config={CONFIGS / name}" for name in ("base.yaml", "report.yaml")] + ["--model.init_args.flow.shift=3"]
    cli = SanaCLI(args=args, run=False)
    assert cli.model.sampler.shift == 3.0 and cli.model.flow.shift == 3.0
    assert cli.model.hparams["sampler"]["shift"] == 3.0  # saved resolved: checkpoints resume and load as before
    with pytest.raises(SystemExit):
        SanaCLI(args=["fit", *args, f"--config={CONFIGS / 'grow.yaml'}", "--print_config"])
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["class_path"].endswith("GrowthModule")
    assert model["init_args"]["lr_scheduler"]["init_args"]["max_lr"] == 0.002


@pytest.mark.parametrize("where", ["command line", "config file", "config string"])
def test_a_model_image_size_that_is_not_the_datas_is_an_error_not_ignored(where, tmp_path):
    """The data's image size replaces the model's (a link, so that a sweep over it moves both); one given for the
    model used to be dropped without a word, training at the data's size."""
    base = [f"--config={CONFIGS / 'base.yaml'}", "--config", '{"trainer": {"max_steps": 3}}']
    overlay = "model:\n  init_args:\n    image_size: 64\n"
    if where == "command line":
        model_64 = ["--model.init_args.image_size", "64"]
    elif where == "config file":
        (tmp_path / "model64.yaml").write_text(overlay)
        model_64 = [f"--config={tmp_path / 'model64.yaml'}"]
    else:
        model_64 = ["--config", overlay]
    with pytest.raises(ValueError, match="model image_size 64 is not the data's 32: .* set data.init_args.image_size"):
        SanaCLI(args=base + model_64, run=False)
    cli = SanaCLI(args=base + model_64 + ["--data.init_args.image_size=64"], run=False)
    assert cli.model.hparams["image_size"] == cli.datamodule.stream_config.image_size == 64
    assert cli.trainer.max_steps == 3  # an inline config string is read too


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_documents_each_option_for_its_help(name, capsys):
    """`--help` shows each option's line from the function's `Args:` section."""
    documented = {p.arg_name: p.description for p in docstring_parser.parse(command(name).__doc__).params}
    undocumented = [p for p in inspect.signature(command(name)).parameters if not documented.get(p)]
    assert not undocumented, f"{name}: document {undocumented} in the docstring's Args section"
    with pytest.raises(SystemExit):
        main([name, "--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse re-wraps lines, also at hyphens
    assert all("".join(line.split()) in shown for line in documented.values())


def test_module_options_show_their_docstrings_in_help(capsys):
    with pytest.raises(SystemExit):
        SanaCLI(args=["fit", "--model.help", "sana_lightning.growth_module.GrowthModule"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "Multiplies the learning rate of the blocks that came from the source." in shown
    assert "Start from these weights: a checkpoint" in shown  # SanaFlowModule's own, through **kwargs
