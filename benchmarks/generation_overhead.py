"""Lightning's predict loop against a bare loop for `generate`: the same requests, model and batch size, side by side.

    python -m benchmarks.generation_overhead [--prompts 48] [--steps 20] [--repeats 3]

The model is configs/base.yaml's with random weights (the timing does not depend on what it learnt) and `--steps`
sampling steps; both paths write the same GenEval folder. Goal (issue #16): the predict loop within 5% of the bare loop.
"""

import argparse
import statistics
import tempfile
import time

from benchmarks.common import from_config, pil_generator, report
from sana_lightning.eval.folder import folder_requests, write_folder
from sana_lightning.generation import generate_requests
from sana_lightning.trainer_options import TrainerOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = {"model.init_args.ema_decay": None, "model.init_args.sampler.steps": args.steps}
    module = from_config(settings=settings)[0].eval()
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
    records = [{"prompt": f"a photo of a {colours[i % 4]} {shapes[i % 3]}"} for i in range(args.prompts)]

    def bare(folder: str) -> None:
        write_folder(folder, records, 1, pil_generator(module, batch_size=args.batch_size), args.batch_size)

    def predict(folder: str) -> None:
        options = TrainerOptions(accelerator="cpu", devices=1)
        generate_requests(module, folder_requests(folder, records, 1), module.sampler, args.batch_size, options)

    seconds = {"bare loop": [], "predict loop": []}
    for _ in range(args.repeats):  # alternate, so both see the same machine load
        for name, run in (("bare loop", bare), ("predict loop", predict)):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                run(folder)
                seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["bare loop"])
    rows = [
        {
            "path": name,
            "images": args.prompts,
            "median s": round(statistics.median(times), 2),
            "images/s": round(args.prompts / statistics.median(times), 2),
            "vs bare loop": round(statistics.median(times) / base, 3),
        }
        for name, times in seconds.items()
    ]
    report("generation_overhead", rows, steps=args.steps, batch_size=args.batch_size, repeats=args.repeats)


if __name__ == "__main__":
    main()
