"""The SLURM example `configs/slurm/grow_4.8b.sbatch` asks for one task per GPU as Lightning's SLURMEnvironment needs,
its srun command line parses against the code (a typo in an option or a config path fails), and README.md shows that
same command."""

import re
import shlex
from pathlib import Path

import pytest
from test_configs import ParseOnly

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "configs/slurm/grow_4.8b.sbatch"
LAUNCH = ["srun", "python", "-m", "sana_lightning.cli", "fit"]


class ParseFit(ParseOnly):
    """`fit` parsed and checked (`--ckpt_path last` resolved too), nothing built or run."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def sbatch_options(text: str) -> dict[str, str]:
    """`#SBATCH --key=value` directives as {"--key": "value"}."""
    tokens = [t for line in text.splitlines() if line.startswith("#SBATCH ") for t in shlex.split(line[8:])]
    return dict(token.partition("=")[::2] for token in tokens)


def srun_command(text: str) -> str:
    """The srun command as the script writes it, from its first line through its continuation lines."""
    lines = text.splitlines()
    end = start = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    while lines[end].endswith("\\"):
        end += 1
    return "\n".join(lines[start : end + 1])


def srun_arguments(text: str, script_args: list[str]) -> list[str]:
    """The srun command's words once the shell has substituted the job's variables and the script's arguments."""
    env = {"SLURM_NNODES": sbatch_options(text)["--nodes"]}
    words = shlex.split(srun_command(text).replace("\\\n", " "))
    expanded = [[*script_args] if word == "$@" else [re.sub(r"\$(\w+)", lambda m: env[m[1]], word)] for word in words]
    return [word for group in expanded for word in group]


@pytest.fixture(scope="module")
def script() -> str:
    return SCRIPT.read_text()


def test_one_task_per_gpu_on_every_node_and_a_warning_signal_before_the_time_limit(script):
    options = sbatch_options(script)
    args = srun_arguments(script, [])
    assert args[: len(LAUNCH)] == LAUNCH
    devices = args[args.index("--trainer.devices") + 1]
    assert options["--ntasks-per-node"] == options["--gpus-per-node"] == devices == "8"
    assert args[args.index("--trainer.num_nodes") + 1] == options["--nodes"] == "2"
    assert options["--signal"] == "SIGUSR1@90"  # every task, not only the batch shell (no `B:`)


@pytest.mark.parametrize("script_args", [[], ["--ckpt_path", "last"]], ids=["first", "continue"])
def test_srun_command_parses_against_the_code(script, script_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the repository root, with a previous run's sharded last.ckpt
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    last = tmp_path / "runs/grow_4.8b/version_3/checkpoints/last.ckpt"
    last.mkdir(parents=True)
    cli = ParseFit(args=srun_arguments(script, script_args)[len(LAUNCH) - 1 :])
    fit = cli.config.fit
    assert (fit.trainer.num_nodes, str(fit.trainer.devices)) == (2, "8")
    assert fit.trainer.strategy.class_path == "sana_lightning.sharding.FSDP2Strategy"
    assert fit.trainer.plugins[-1].class_path.endswith("SLURMEnvironment")
    assert fit.trainer.plugins[-1].init_args.auto_requeue is False
    if script_args:
        assert Path(fit.ckpt_path) == Path("runs/grow_4.8b/version_3/checkpoints/last.ckpt")
        assert fit.trainer.logger.init_args.version == "version_3"  # logs continue in the resumed run's folder


def test_readme_shows_the_scripts_srun_command(script):
    assert srun_command(script) in (ROOT / "README.md").read_text()
