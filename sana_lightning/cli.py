"""Command line: `python -m sana_lightning.cli fit|validate|test|predict --config ...` plus model/data commands.

Lightning subcommands come from `LightningCLI` (sweeps: stack `--config` files and `--x.y=value` overrides); the
others (`shapes`, `shards`, `precompute`, `grow`, `importance`, `prune`, `generate`, `geneval`, `scale`, `prompts`,
`consolidate`, `memory`, `export`, `sweep`) are plain functions whose typed signatures make their options.
"""

import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import CLI
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from sana_lightning.atomic import atomic_directory, tensor_bytes
from sana_lightning.checkpoints import consolidate_checkpoint, load_checkpoint_transformer
from sana_lightning.data.datamodule import ShardStream, expand_shards
from sana_lightning.data.folder_shards import write_folder_shards
from sana_lightning.data.precompute import precompute
from sana_lightning.data.shapes import write_shapes_dataset
from sana_lightning.eval.folder import folder_requests, prompt_slice
from sana_lightning.eval.geneval import format_summary, read_metadata, summarize
from sana_lightning.eval.prompts import COCO_CLASSES, SHAPES_CLASSES, geneval_prompts
from sana_lightning.eval.scoring import score_folder_on_devices
from sana_lightning.eval.shapes_detector import ShapesDetector
from sana_lightning.eval.transformers_detector import make_detector
from sana_lightning.export import export_diffusers
from sana_lightning.generation import TrainerOptions, generate_requests, trainer_options
from sana_lightning.growth import GrowthConfig, Init, Strategy, grow
from sana_lightning.images import frame, image_grid, pil_to_tensor
from sana_lightning.inference_scaling import CLIPJudge, GenEvalOracleJudge, VLMJudge
from sana_lightning.inference_scaling.judging import judge_on_devices
from sana_lightning.inference_scaling.search import Selection, select_candidates
from sana_lightning.memory import OPTIMIZERS, MemoryPlan, memory_plan
from sana_lightning.module import SanaFlowModule
from sana_lightning.plots import importance_figure
from sana_lightning.pruning import METRICS, Importance, block_importance, prune, select_blocks
from sana_lightning.resume import (
    checkpoint_hparams,
    find_last_checkpoint,
    learning_rate_differences,
    run_version,
    settings_differences,
)
from sana_lightning.sweep import run_sweep
from sana_lightning.user_errors import check_config_files, error_line


def grow_checkpoint(
    source: str,
    out_dir: str,
    target_layers: int,
    strategy: Strategy = "partial_preservation",
    drop_last: int = 2,
    zero_new: bool = True,
    zero_gate: bool = False,
    init: Init = "official",
    qk_norm: str | None = "rms_norm_across_heads",
    source_weights: str = "ema",
) -> Path:
    """Grow a checkpoint (or diffusers directory) without training; write a diffusers directory plus `growth.json`
    (atomically: a finished directory replaces `out_dir`). Options as in `GrowthConfig`."""
    config = GrowthConfig(target_layers, strategy, drop_last, zero_new, zero_gate, init, qk_norm)
    grown, origins = grow(load_checkpoint_transformer(source, source_weights), config)
    out = Path(out_dir)
    with atomic_directory(out, tensor_bytes(grown.state_dict())) as staging:
        grown.save_pretrained(staging)
        (staging / "growth.json").write_text(
            json.dumps({"source": source, **asdict(config), "block_origins": origins}, indent=2)
        )
    print(f"grown {len(origins) - origins.count(None)} source blocks + {origins.count(None)} new -> {out}")
    return out


def _measure_importance(
    module: SanaFlowModule,
    shards: str,
    batch_size: int,
    num_sigmas: int,
    loss_delta: bool,
    seed: int,
    trainer: TrainerOptions | None = None,
) -> Importance:
    """Importance on the first device of the `trainer`'s flags (the module is moved there), in its precision (fp32,
    or autocast for `bf16-mixed`): on the CPU in fp32, the same scores as without flags there."""
    device, precision = (trainer or TrainerOptions()).device_and_precision()
    module.to(device)
    stream = ShardStream(expand_shards(shards), batch_size, module.hparams.image_size, 1, shuffle_buffer=1, seed=seed)
    with precision.forward_context():
        calibration = module.calibration_batch(next(iter(stream)), seed)
        return block_importance(module.transformer, calibration, module.calibration_sigmas(num_sigmas), loss_delta)


def _write_importance(importance: Importance, out: Path, record: dict, removed: list[int] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "importance.json").write_text(json.dumps(record | importance.to_dict(), indent=2))
    importance_figure(importance, removed).savefig(out / "importance.png", dpi=110)
    for metric, scores in importance.scores.items():
        print(f"{metric:>10}: " + " ".join(f"{v:.4f}" for v in scores.tolist()))


def _load(checkpoint: str, text_encoder: str | None, autoencoder: str | None, image_size: int | None):
    """A checkpoint or diffusers directory; the encoder paths and image size are needed for foreign diffusers models."""
    settings = dict(image_size=image_size)
    settings["text_encoder"] = {"path": text_encoder} if text_encoder else None
    settings["autoencoder"] = {"path": autoencoder} if autoencoder else None
    return SanaFlowModule.from_checkpoint(checkpoint, **settings)


def importance_report(
    checkpoint: str,
    out_dir: str = "reports/importance",
    shards: str = "data/shapes/val-*.tar",
    batch_size: int = 32,
    num_sigmas: int = 10,
    loss_delta: bool = True,
    seed: int = 0,
    text_encoder: str | None = None,
    autoencoder: str | None = None,
    image_size: int | None = None,
    trainer: TrainerOptions | None = None,
) -> Importance:
    """Block importance of a checkpoint (or diffusers directory: give `text_encoder` / `autoencoder` / `image_size`
    unless it was exported by sana-lightning) on a calibration batch of `shards`: `importance.json` and `.png`.
    Measured on the first device of `trainer` (`--trainer.accelerator cuda --trainer.precision bf16-mixed`)."""
    module = _load(checkpoint, text_encoder, autoencoder, image_size)
    importance = _measure_importance(module, shards, batch_size, num_sigmas, loss_delta, seed, trainer)
    _write_importance(importance, Path(out_dir), {"checkpoint": checkpoint})
    return importance


def prune_checkpoint(
    checkpoint: str,
    out_dir: str,
    target_depth: int,
    criterion: str = "cosine",
    protect_ends: bool = False,
    shards: str = "data/shapes/val-*.tar",
    batch_size: int = 32,
    num_sigmas: int = 10,
    seed: int = 0,
    text_encoder: str | None = None,
    autoencoder: str | None = None,
    image_size: int | None = None,
    trainer: TrainerOptions | None = None,
) -> Path:
    """Remove the least important blocks by `criterion` (cosine, angular, loss_delta; or the baselines random,
    last) down to `target_depth`; write a diffusers directory and `prune.json`. A diffusers input needs
    `text_encoder` / `autoencoder` / `image_size` unless it was exported by sana-lightning. Importance is measured
    on the first device of `trainer` (`--trainer.accelerator cuda --trainer.precision bf16-mixed`); the weights
    written are the checkpoint's, whatever the precision."""
    module = _load(checkpoint, text_encoder, autoencoder, image_size)
    depth = len(module.transformer.transformer_blocks)
    importance = None
    if criterion in METRICS:
        loss_delta = criterion == "loss_delta"
        importance = _measure_importance(module, shards, batch_size, num_sigmas, loss_delta, seed, trainer)
    removed = select_blocks(depth, target_depth, criterion, importance, protect_ends, seed)
    out = Path(out_dir)
    pruned = prune(module.transformer, removed)
    record = {
        "checkpoint": checkpoint,
        "criterion": criterion,
        "removed": removed,
        "kept": [i for i in range(depth) if i not in removed],
    }
    with atomic_directory(out, tensor_bytes(pruned)) as staging:
        pruned.save_pretrained(staging)
        (staging / "prune.json").write_text(json.dumps(record, indent=2))
        if importance is not None:
            _write_importance(importance, staging, record, removed)
    print(f"removed blocks {removed} ({criterion}): {depth} -> {target_depth} blocks in {out}")
    return out


def generate_images(
    checkpoint: str,
    out_dir: str,
    metadata: str = "data/shapes/metadata.jsonl",
    images_per_prompt: int = 4,
    batch_size: int = 32,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    prompts: str | None = None,
    trainer: TrainerOptions | None = None,
) -> Path:
    """Generate GenEval's image folder (`<out_dir>/00000/samples/0000.png ...`) for a metadata file, or for the
    `prompts` slice of it (`0:50`; folders keep the metadata's indices), in Lightning's predict loop on the
    `trainer`'s devices (`--trainer.devices 8`: the same files as 1 device); a rerun makes only what is missing."""
    requests = folder_requests(out_dir, read_metadata(metadata), images_per_prompt, seed, prompt_slice(prompts))
    module = SanaFlowModule.from_checkpoint(checkpoint)
    sampler = replace(module.sampler, **{k: v for k, v in (("steps", steps), ("guidance_scale", guidance_scale)) if v})
    made = generate_requests(module, requests, sampler, batch_size, trainer or TrainerOptions())
    print(f"made {made} of the {len(requests)} missing images of {out_dir} in this process")
    return Path(out_dir)


def geneval_score(
    image_dir: str,
    detector: str = "shapes",
    detector_path: str | None = None,
    clip_path: str | None = None,
    out_file: str | None = None,
    device: str | None = None,
    batch_size: int = 16,
    trainer: TrainerOptions | None = None,
) -> dict:
    """Score a GenEval image folder with `detector` (`shapes`, `mask2former` or `transformers`, the latter two with
    local `detector_path` and `clip_path`), `batch_size` images a detector forward, in Lightning's predict loop on the
    `trainer`'s devices (`--trainer.devices 8`: the same results as 1 device; `--device cuda` is short for one device
    of that kind); print GenEval's summary and write per-image results + summary as JSON (summary: rank 0's)."""
    scorer = make_detector(detector, detector_path, clip_path)  # on the CPU: Lightning moves it to its device
    results = score_folder_on_devices(image_dir, scorer, batch_size, trainer_options(device, trainer))
    if results is None:  # not rank 0: it gathers and reports
        return {}
    summary = summarize(results)
    print(format_summary(summary))
    out = Path(out_file or Path(image_dir) / "geneval.json")
    out.write_text(json.dumps({"summary": summary, "images": [asdict(r) for r in results]}, indent=2))
    return summary


def read_prompts(path: str) -> list[dict]:
    """GenEval-format `metadata.jsonl`, or a text file with one prompt a line (as `{"prompt": ...}` records)."""
    if path.endswith(".jsonl"):
        return read_metadata(path)
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"'{path}' holds no prompts: one prompt a line, or a GenEval metadata.jsonl")
    return [{"prompt": p} for p in prompts]


def make_judge(
    name: str,
    path: str | None,
    records: list[dict],
    question: str | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
    batch_size: int = 32,
):
    """`oracle` (GenEval + the Shapes detector), `clip` or `vlm` (transformers models from `path`, `batch_size` pairs
    a forward; the VLM asks SANA's verifier prompt unless `question` is given, and runs a custom-code verifier only
    with `trust_remote_code`)."""
    if question is not None and name != "vlm":
        raise ValueError(f"--question is the vlm judge's; the {name} judge asks none")
    if name == "oracle":
        if any("tag" not in r for r in records):
            raise ValueError("the oracle judge needs GenEval metadata prompts (a metadata.jsonl), not plain text")
        return GenEvalOracleJudge(ShapesDetector(), {r["prompt"]: r for r in records})
    if name in ("clip", "vlm"):
        if not path:
            raise ValueError(f"the {name} judge needs judge_path: a local transformers model directory")
        if name == "clip":
            return CLIPJudge(path, device, batch_size=batch_size)
        question = question or VLMJudge.OFFICIAL_PROMPT
        return VLMJudge(path, question, trust_remote_code, device, batch_size=batch_size)
    raise ValueError(f"unknown judge '{name}': use oracle, clip or vlm")


def scale_command(
    checkpoint: str,
    out_dir: str,
    prompts: str = "data/shapes/metadata.jsonl",
    num_candidates: int = 16,
    k: int = 1,
    judge: str = "oracle",
    judge_path: str | None = None,
    question: str | None = None,
    trust_remote_code: bool = False,
    selection: Selection = "tournament",
    solver: Literal["flow_euler", "flow_dpm_solver"] | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 32,
    judge_batch_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    log_dir: str = "runs/scale",
    grid_prompts: int = 8,
    trainer: TrainerOptions | None = None,
) -> dict | None:
    """Inference-time scaling: `num_candidates` images a prompt, judged, best `k` kept in GenEval's layout under
    `out_dir` (+ `scores.json`); a grid of candidates (at most 64 a prompt, winners framed) goes to TensorBoard in
    `log_dir`. Candidates are made (`batch_size` a forward), then judged (`judge_batch_size` pairs a forward, default
    `batch_size`), in Lightning's predict loop on the `trainer`'s devices (`--trainer.devices 8`: the same images,
    verdicts and winners as 1 device; a rerun makes only the missing images; `--device cuda` is short for one device
    of that kind); the first process then runs the selection. `solver` / `steps` / `guidance_scale` override the
    checkpoint's sampler. The `vlm` judge asks SANA's verifier prompt (`question` replaces it, with `{prompt}`);
    `trust_remote_code` lets a custom-code verifier such as NVILA run its own code (off by default)."""
    trainer = trainer_options(device, trainer)
    records = read_prompts(prompts)
    # Every rank judges its share; a bad judge fails before any image is made. On the CPU: Lightning moves it.
    chosen_judge = make_judge(
        judge, judge_path, records, question, trust_remote_code, batch_size=judge_batch_size or batch_size
    )
    module = SanaFlowModule.from_checkpoint(checkpoint)
    overrides = {"solver": solver, "steps": steps, "guidance_scale": guidance_scale}
    sampler = replace(module.sampler, **{name: v for name, v in overrides.items() if v is not None})
    start = time.perf_counter()
    requests = folder_requests(Path(out_dir) / "candidates", records, num_candidates, seed)
    generate_requests(module, requests, sampler, batch_size, trainer)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    judged = judge_batch_size or batch_size
    verdicts = judge_on_devices(out_dir, records, chosen_judge, num_candidates, judged, trainer)
    if verdicts is None or rank_zero_only.rank != 0:  # not rank 0: it selects and reports
        return None
    result = select_candidates(
        out_dir, records, chosen_judge, num_candidates, k, selection, judged, seconds, verdicts,
        time.perf_counter() - start,
    )  # fmt: skip
    writer = SummaryWriter(log_dir)
    for index, entry in enumerate(result["prompts"][:grid_prompts]):
        winners = entry["winners"]
        shown = sorted(winners + [i for i in range(num_candidates) if i not in winners][: max(0, 64 - len(winners))])
        folder = Path(out_dir) / "candidates" / f"{index:05d}" / "samples"
        images = [pil_to_tensor(Image.open(folder / f"{i:04d}.png").convert("RGB")) for i in shown]
        writer.add_image(
            f"scale/{index:05d}", image_grid(frame(torch.stack(images).float() / 255, [i in winners for i in shown]))
        )
        writer.add_text(f"scale/{index:05d}", entry["prompt"])
    writer.close()
    print(
        f"{result['images_generated']} images, {result['judge_calls']} judge calls, "
        f"{result['comparisons']} comparisons -> {out_dir}"
    )
    return result


def consolidate(checkpoint: str, output: str | None = None) -> Path:
    """Gather a sharded (FSDP) checkpoint folder into one `.ckpt` file (default: `<folder>-consolidated.ckpt`)."""
    out = consolidate_checkpoint(checkpoint, output)
    print(f"consolidated {checkpoint} -> {out}")
    return out


def memory_report(
    preset: str = "sana-4.8b",
    gpus: list[int] = [8, 16, 32],
    gpu_memory_gb: float = 80.0,
    batch_per_gpu: int = 4,
    image_size: int = 1024,
    downsample: int = 32,
    caption_tokens: int = 300,
    optimizer: Literal[OPTIMIZERS] = "CAME-8bit",
    param_dtype: str = "bfloat16",
    frozen_params: float = 2.6e9,
) -> list[MemoryPlan]:
    """Print GB per GPU of FSDP training `preset` on each of `gpus` GPUs: weights, grads, optimizer state, gathered
    blocks, frozen encoders (`frozen_params` in bf16: Gemma-2-2B-IT ~2.6e9; 0 with precomputed features) and block
    activations without / with activation checkpointing; and whether it fits `gpu_memory_gb`."""
    plans = [
        memory_plan(
            preset, g, batch_per_gpu, image_size, downsample, caption_tokens, optimizer, param_dtype, frozen_params
        )
        for g in gpus
    ]
    fields = ("weights", "grads", "optimizer", "gathered_blocks", "frozen", "activations", "activations_checkpointed")
    print(f"{preset}, {optimizer}, {param_dtype} compute, {batch_per_gpu} x {image_size}px per GPU (GB per GPU)")
    print(f"{'':>26}" + "".join(f"{g:>10} GPUs" for g in gpus))
    for field in fields:
        print(f"{field:>26}" + "".join(f"{getattr(p, field) / 1e9:>15.2f}" for p in plans))
    for checkpointed in (False, True):
        name = "total, checkpointed" if checkpointed else "total, no checkpointing"
        totals = [p.total(checkpointed) for p in plans]
        cells = "".join(f"{t / 1e9:>10.2f} {'fits' if t <= gpu_memory_gb * 1e9 else 'OOM':>4}" for t in totals)
        print(f"{name:>26}{cells}")
    return plans


def write_prompts(
    out_file: str, vocabulary: Literal["coco", "shapes"] = "coco", prompts_per_task: int = 100, seed: int = 0
) -> Path:
    """Write GenEval-format `metadata.jsonl` prompts over COCO-80 with GenEval's names (real models) or the Shapes
    vocabulary."""
    classes = COCO_CLASSES if vocabulary == "coco" else SHAPES_CLASSES
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in geneval_prompts(classes, prompts_per_task, seed)))
    return out


COMMANDS = {
    "shapes": write_shapes_dataset,
    "shards": write_folder_shards,
    "precompute": precompute,
    "grow": grow_checkpoint,
    "importance": importance_report,
    "prune": prune_checkpoint,
    "generate": generate_images,
    "geneval": geneval_score,
    "scale": scale_command,
    "prompts": write_prompts,
    "consolidate": consolidate,
    "export": export_diffusers,
    "sweep": run_sweep,
    "memory": memory_report,
}


class SanaCLI(LightningCLI):
    """LightningCLI with OmegaConf interpolation in configs and TensorBoard logging by default."""

    def __init__(self, args=None, run: bool = True) -> None:
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
            },
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
            lr = self.model.optimizer_factory([torch.nn.Parameter(torch.zeros(1))]).defaults["lr"]
            scales = [group.get("lr_scale", 1.0) for group in self.model.parameter_groups()]
            differences += learning_rate_differences(path, [lr * scale for scale in scales])
        if differences:
            raise ValueError(
                f"--ckpt_path '{path}' was trained with other settings ({'; '.join(differences)}): resume with "
                "the config it was trained with (config.yaml in its run folder), or add "
                "--resume_with_checkpoint_settings true to take the checkpoint's settings"
            )

    before_fit = before_validate = before_test = before_predict = _check_checkpoint_settings


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in COMMANDS:
        CLI(COMMANDS, args=argv)
        return
    if argv[:1] in (["-h"], ["--help"]):
        print(f"data commands: {', '.join(COMMANDS)} (each takes --help)\n")
    SanaCLI(args=args)  # None: LightningCLI reads the command line itself


def run() -> None:
    """`main` for people: any error prints one line, the outermost message naming a file or option, and exits
    non-zero instead of showing a traceback; SANA_LIGHTNING_DEBUG=1 shows the traceback."""
    try:
        check_config_files(sys.argv[1:])
        main()
    except Exception as error:
        if os.environ.get("SANA_LIGHTNING_DEBUG", "") not in ("", "0"):
            raise
        sys.exit(f"error: {error_line(error)}")


if __name__ == "__main__":
    run()
