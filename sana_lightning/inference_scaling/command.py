"""The `scale` command: inference-time scaling of a trained model, end to end."""

import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from sana_lightning.eval.folder import folder_requests
from sana_lightning.eval.prompts import read_prompts
from sana_lightning.factory import make_judge
from sana_lightning.images import frame, image_grid, pil_to_tensor
from sana_lightning.inference_scaling.search import Selection, select_candidates
from sana_lightning.trainer_options import TrainerOptions, trainer_options


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
    `out_dir` (+ `scores.json`); a grid of candidates (at most 64 a prompt, winners framed) goes to TensorBoard.
    Candidates are made, then judged, in Lightning's predict loop on the `trainer`'s devices (`--trainer.devices 8`:
    the same images, verdicts and winners as 1 device; a rerun makes only the missing images); the first process
    then runs the selection.

    Args:
        checkpoint: A sana-lightning checkpoint or exported diffusers directory.
        out_dir: Winners in GenEval's layout, candidates/ and scores.json.
        prompts: GenEval metadata.jsonl, or a text file with one prompt a line.
        num_candidates: Images generated a prompt (N).
        k: Winners kept a prompt.
        judge: oracle (GenEval + the Shapes detector), clip or vlm (local models at judge_path), or random
            (coin flips: the lower bound).
        judge_path: Local transformers directory of the clip / vlm judge.
        question: The vlm judge's yes/no question with {prompt} (default: SANA's verifier prompt).
        trust_remote_code: Let a custom-code verifier such as NVILA run its own code.
        selection: tournament (SANA 1.5's knockout) or best_of_n by score.
        solver: flow_euler or flow_dpm_solver (default: the checkpoint's sampler).
        steps: Sampler steps (default: the checkpoint's sampler).
        guidance_scale: Classifier-free guidance (default: the checkpoint's sampler).
        batch_size: Images a generation forward.
        judge_batch_size: (image, prompt) pairs a judge forward (default: batch_size).
        seed: First seed of the candidates.
        device: Short for one device of that kind (cuda, cuda:1); or use --trainer.*.
        log_dir: TensorBoard directory of the candidate grids.
        grid_prompts: Prompts whose candidate grid is logged.
        trainer: Devices, strategy and precision of the predict loops.
    """
    from lightning.pytorch.utilities import rank_zero_only
    from torch.utils.tensorboard import SummaryWriter

    from sana_lightning.generation import generate_requests
    from sana_lightning.inference_scaling.judging import judge_on_devices
    from sana_lightning.module import SanaFlowModule

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
