"""Command line: `python -m sana_lightning.cli COMMAND ...`, a dispatch table.

`fit` / `validate` / `test` / `predict` are Lightning's (`SanaCLI`, stacked `--config` files and `--x.y=value`
overrides); every other command is the function of the paper idea it belongs to, whose typed signature and docstring
make its options. A command imports its module only when it runs, so `--help` stays fast.
"""

import os
import sys
from importlib import import_module

LIGHTNING_COMMANDS = {
    "fit": "train a model from stacked YAML configs (flow matching, growth, post-prune recovery)",
    "validate": "validation loss of a checkpoint",
    "test": "test loss of a checkpoint",
    "predict": "images for the predict data's captions",
}

COMMANDS = {
    "shapes": ("sana_lightning.data.shapes:write_shapes_dataset", "write the embedded Shapes dataset (shards)"),
    "shards": ("sana_lightning.data.folder_shards:write_folder_shards", "write WebDataset shards from an image folder"),
    "precompute": ("sana_lightning.data.precompute:precompute", "precompute latents and caption features into shards"),
    "grow": ("sana_lightning.growth:grow_checkpoint", "grow a checkpoint in depth (SANA 1.5 depth growth)"),
    "importance": ("sana_lightning.pruning.command:importance_report", "block importance of a checkpoint"),
    "prune": ("sana_lightning.pruning.command:prune_checkpoint", "remove the least important blocks (depth pruning)"),
    "generate": ("sana_lightning.eval.commands:generate_images", "generate GenEval's image folder"),
    "geneval": ("sana_lightning.eval.commands:geneval_score", "score a GenEval image folder"),
    "prompts": ("sana_lightning.eval.commands:write_prompts", "write GenEval-format prompts (COCO or Shapes)"),
    "scale": ("sana_lightning.inference_scaling.command:scale_command", "inference-time scaling: N samples, judged"),
    "consolidate": ("sana_lightning.checkpoints:consolidate", "gather a sharded checkpoint into one file"),
    "export": ("sana_lightning.export:export_diffusers", "export a checkpoint as a diffusers model or pipeline"),
    "sweep": ("sana_lightning.sweep:run_sweep", "hyper-parameter sweep of fit runs on Optuna"),
    "memory": ("sana_lightning.memory:memory_report", "GB per GPU (and host GB per rank) of FSDP training a preset"),
    "train-verifier": ("sana_lightning.inference_scaling.verifier_training:train_verifier", "train a Shapes judge"),
}


def command(name: str):
    """The function behind command `name`."""
    module, function = COMMANDS[name][0].split(":")
    return getattr(import_module(module), function)


def usage() -> str:
    rows = [*LIGHTNING_COMMANDS.items(), *((name, summary) for name, (_, summary) in COMMANDS.items())]
    lines = [f"  {name:<16}{summary}" for name, summary in rows]
    return (
        "usage: python -m sana_lightning.cli COMMAND [--help] [options]\n\n"
        "Lightning commands (--config a.yaml --config b.yaml --trainer.max_steps=100 ...):\n"
        + "\n".join(lines[: len(LIGHTNING_COMMANDS)])
        + "\n\ncommands (each takes --help):\n"
        + "\n".join(lines[len(LIGHTNING_COMMANDS) :])
    )


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] in COMMANDS:
        from jsonargparse import CLI

        CLI({argv[0]: command(argv[0])}, args=argv)
        return
    if argv[0] not in LIGHTNING_COMMANDS:
        raise ValueError(f"unknown command '{argv[0]}': use one of {', '.join([*LIGHTNING_COMMANDS, *COMMANDS])}")
    from sana_lightning.lightning_cli import SanaCLI

    SanaCLI(args=args)  # None: LightningCLI reads the command line itself


def run() -> None:
    """`main` for people: any error prints one line, the outermost message naming a file or option, and exits
    non-zero instead of showing a traceback; SANA_LIGHTNING_DEBUG=1 shows the traceback."""
    from sana_lightning.user_errors import check_config_files, error_line

    try:
        check_config_files(sys.argv[1:])
        main()
    except Exception as error:
        if os.environ.get("SANA_LIGHTNING_DEBUG", "") not in ("", "0"):
            raise
        sys.exit(f"error: {error_line(error)}")


if __name__ == "__main__":
    run()
