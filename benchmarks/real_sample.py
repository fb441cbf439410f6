"""Real streets: train on the 12 real training images of the shared BDD100k sample, evaluate on
its 4 real validation images at full resolution (1280x720), for three arms at an equal
training budget of CPU time and the same seeds:

    (a) the plain U-Net from scratch,
    (b) the U-Net over the ImageNet-pretrained EfficientNet-Lite0 encoder (`unet_effnet_lite0`),
    (c) (b) fine-tuned from a pre-training on synthetic scenes (`train.init_from`).

    python benchmarks/real_sample.py --budget 400 --pretrain-budget 150 --seeds 0 1 --jobs 3

One torch thread per process, so CPU time is work done, not threads spinning while another job
holds the cores. Each (arm, seed) is one job with its own budget; `--jobs` runs jobs side by
side, which changes the wall-clock time, not the work (the docs' table: about 2,800 CPU s,
39 minutes with --jobs 3 on the shared 2-core machine). Every arm trains at `--size`
(train.image_size, default 288x512: a 720p frame at 0.4, where poles and signs stay a few pixels
wide) with the params.yaml defaults otherwise (loss dice_ce with 1/sqrt class weights); its
schedule is sized to its budget (`train_for`); the last checkpoint is evaluated (never the best
by validation mIoU: the 4 validation images are the test here). The synthetic pre-training of (c)
has its own budget, like ImageNet's for (b), and is not counted in the arm's. Inference img/s:
`predict` on the 4 real 1280x720 validation images, one at a time, wall-clock (so it depends on
the load).

Recipe trials never look at the validation images: `--holdout` trains on 8 of the 12 training
images and scores on the other 4 (every third by name); `--arms b --set loss.name=ohem ...`
trains only some arms, with extra overrides for the EfficientNet arms; `--common ...` gives
overrides to every arm (a recipe change such as copy-paste, compared fairly).

On a GPU node, `--device cuda` trains and scores there; the budget is then wall-clock seconds
(the GPU synchronised at each reading: CPU time would count only the host's share), the jobs
run one at a time (two arms sharing a GPU would get unequal work) and `--workers` processes
decode and augment beside it (one CPU thread cannot feed a GPU 12 images an epoch):

    python benchmarks/real_sample.py --device cuda --workers 8 --budget 60 \
        --pretrain-budget 30 --max-epochs 5000 --seeds 0 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from roadseg.config import load_params  # noqa: E402
from roadseg.evaluate.segmentation import evaluate_model  # noqa: E402
from roadseg.inference.predict import predict  # noqa: E402
from roadseg.models.io import load_model  # noqa: E402
from roadseg.train.loop import train_model  # noqa: E402

SAMPLE = Path(os.environ.get("ROADSEG_SAMPLE_DIR", REPO.parent / "shared/data/bdd100k-sample"))
TRAIN_SIZE = "[288,512]"  # (H, W): a 720p frame at 0.4, where poles and signs stay a few px wide
EFFNET = ["model.name=unet_effnet_lite0", "model.base_channels=16"]
ARMS = {
    "a": ("U-Net, from scratch", ["model.name=unet", "model.base_channels=16"]),
    "b": ("EffNet-Lite0 U-Net, ImageNet encoder", EFFNET),
    "c": ("(b) fine-tuned from synthetic scenes", EFFNET),
}
MAX_EPOCHS = 200
QUIET = {"tracking_uri": None, "progress": False, "echo": lambda _line: None}
COMMON = ["train.batch_size=4",
          "train.warmup_epochs=1", "train.early_stopping_patience=1000000", "train.lr=0.003",
          "train.sample_every=1000000"]  # fmt: skip


def budget_clock(device: str) -> Callable[[], float]:
    """What a budget is counted in: this process's CPU seconds (all threads) on the CPU, so on a
    shared machine another job's load cannot decide how many steps an arm gets; wall-clock
    seconds on a GPU, once the queued kernels are done (the host's CPU time would miss them)."""
    if device == "cpu":
        return time.process_time

    def gpu_seconds() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    return gpu_seconds


def train_for(
    overrides: list[str],
    data_dir: Path,
    out: Path,
    budget: float,
    *,
    device: str = "cpu",
    max_epochs: int = MAX_EPOCHS,
) -> tuple[Path, int, float]:
    """Train until `budget` seconds of `budget_clock(device)` are spent; (last checkpoint,
    epochs, seconds).

    Epochs 2 and 2-3 are timed as
    resumed calls of one and two epochs (the first call also builds the model and reads the
    weights): their difference is an epoch's cost, the rest a call's set-up. The schedule is
    then set to the epochs that fit the budget and the rest runs in one call, so every arm's
    learning rate decays to zero by the end of its budget whatever its speed (a fixed epoch
    count would leave a slow arm at its peak rate). The timed epochs run at the peak rate:
    warm-up, then decay over `max_epochs`, which has barely begun."""
    clock = budget_clock(device)

    def params_for(epochs: int):
        return load_params(overrides=[*COMMON, *overrides, f"train.epochs={epochs}",
                                      f"train.checkpoint_dir={out}"])  # fmt: skip

    def run(epochs: int, resume: bool, n: int | None) -> float:
        t = clock()
        train_model(params_for(epochs), data_dir, resume=resume, max_epochs_this_run=n,
                    device=device, **QUIET)  # fmt: skip
        return clock() - t

    t0 = clock()
    run(max_epochs, False, 1)
    one, two = run(max_epochs, True, 1), run(max_epochs, True, 2)
    epoch_s = max(two - one, 1e-3)
    left = budget - (clock() - t0) - max(0.0, one - epoch_s)
    total = int(min(max_epochs, 4 + max(0, round(left / epoch_s))))
    if total > 4:
        run(total, True, None)
    return out / "last.pt", total, clock() - t0


def score(checkpoint: Path, data_dir: Path, device: str = "cpu") -> dict:
    """Full-resolution scores on the validation images, and inference img/s on `device`."""
    from roadseg.data.bdd100k import read_image
    from roadseg.data.dataset import list_split

    params = load_params()
    model, spec, _ = load_model(checkpoint)
    model.to(device)
    scores = evaluate_model(model, spec, data_dir, params, "val", device=device, progress=False)
    images = [read_image(s.image) for s in list_split(data_dir, params, "val")]
    predict(model, images[:1], spec, device)  # warm-up
    t0 = time.perf_counter()
    for image in images:
        predict(model, [image], spec, device)  # masks come back to the host: synchronised
    scores["img_per_s"] = len(images) / (time.perf_counter() - t0)
    return scores


def holdout_split(tmp: Path) -> Path:
    """The 12 training images alone, every third one (sorted by name) held out as `val`: recipe
    trials score on these, never on the real validation images."""
    out = tmp / "holdout"
    images = sorted((SAMPLE / "images/10k/train").glob("*.jpg"))
    for i, image in enumerate(images):
        split = "val" if i % 3 == 2 else "train"
        label = SAMPLE / f"labels/sem_seg/masks/train/{image.stem}.png"
        for src, dst in ((image, f"images/10k/{split}"), (label, f"labels/sem_seg/masks/{split}")):
            (out / dst).mkdir(parents=True, exist_ok=True)
            (out / dst / src.name).symlink_to(src)
    return out


def synthetic_pretraining(tmp: Path, seed: int, args: argparse.Namespace, extra: list[str]) -> Path:
    from roadseg.data.synth import synthesize_dataset

    data = tmp / "synth"
    if not data.is_dir():
        synthesize_dataset(data, train=48, val=8, test=0, height=360, width=640, seed=0)
    overrides = [*ARMS["b"][1], *extra, f"train.seed={seed}"]
    return train_for(overrides, data, tmp / f"pre-{seed}", args.pretrain_budget,
                     device=args.device, max_epochs=args.max_epochs)[0]  # fmt: skip


def table(results: dict[str, list[dict]], device: str = "cpu") -> str:
    names = [c["name"] for c in next(iter(results.values()))[0]["per_class"]]
    train_s = "train CPU s" if device == "cpu" else f"train s ({device})"
    head = ["arm", "mIoU", "pixel acc.", "epochs", train_s, "img/s 720p", *names]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, runs in results.items():

        def mean(get, runs=runs):
            return statistics.mean(get(r) or 0.0 for r in runs)

        cells = [f"({arm}) {ARMS[arm][0]}", f"{mean(lambda r: r['miou']):.3f}",
                 f"{mean(lambda r: r['pixel_accuracy']):.3f}",
                 f"{mean(lambda r: r['epochs']):.0f}", f"{mean(lambda r: r['seconds']):.0f}",
                 f"{mean(lambda r: r['img_per_s']):.2f}"]  # fmt: skip
        for i in range(len(names)):
            cells.append(f"{mean(lambda r, i=i: r['per_class'][i]['iou']):.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run_arm(arm: str, seed: int, args: argparse.Namespace) -> dict:
    """One arm of one seed ((c) with its synthetic pre-training first): its scores."""
    if args.device == "cpu":
        torch.set_num_threads(1)
    size = [f"train.image_size={args.size.replace(' ', '')}", f"data.num_workers={args.workers}",
            *args.common]  # fmt: skip
    label, overrides = ARMS[arm]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = holdout_split(tmp) if args.holdout else SAMPLE
        extra = args.overrides if arm != "a" else []
        if arm == "c":
            pre = synthetic_pretraining(tmp, seed, args, [*size, *extra])
            extra = [f"train.init_from={pre}", *extra]
        ckpt, epochs, seconds = train_for([*size, *overrides, *extra, f"train.seed={seed}"],
                                          data, tmp / f"{arm}-{seed}", args.budget,
                                          device=args.device, max_epochs=args.max_epochs)  # fmt: skip
        scores = score(ckpt, data, args.device) | {"epochs": epochs, "seconds": seconds}
    unit = "CPU s" if args.device == "cpu" else "s"
    print(f"seed {seed} ({arm}) {label}: mIoU {scores['miou']:.3f}, pixel acc "
          f"{scores['pixel_accuracy']:.3f}, {epochs} epochs in {seconds:.0f} {unit}, "
          f"{scores['img_per_s']:.2f} img/s; IoU " + ", ".join(
              f"{c['name']} {c['iou']:.2f}" for c in scores["per_class"]
              if c["iou"] is not None), flush=True)  # fmt: skip
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=75.0,
                        help="training seconds per arm: CPU s on cpu, wall-clock s on cuda")  # fmt: skip
    parser.add_argument("--pretrain-budget", type=float, default=45.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides",
                        help="extra params overrides for the EffNet arms (b) and (c): recipe trials")  # fmt: skip
    parser.add_argument("--common", nargs="*", default=[],
                        help="params overrides for every arm, (a) included: a recipe change compared fairly")  # fmt: skip
    parser.add_argument("--size", default=TRAIN_SIZE, help="train.image_size of every arm")
    parser.add_argument("--holdout", action="store_true",
                        help="recipe trials: train on 8 training images, score on the other 4")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1,
                        help="arms and seeds trained side by side in this many processes (one thread each)")  # fmt: skip
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where every arm trains and is scored")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0,
                        help="data.num_workers of each job: loader processes beside a GPU")  # fmt: skip
    parser.add_argument("--max-epochs", type=int, default=MAX_EPOCHS,
                        help="the schedule's cap, whatever the budget allows")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/real_sample.md")
    args = parser.parse_args()
    if not (SAMPLE / "images/10k/train").is_dir():
        raise SystemExit(f"the real sample is not at {SAMPLE} (set ROADSEG_SAMPLE_DIR)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here")
    if args.device == "cuda" and args.jobs > 1:
        raise SystemExit("--device cuda runs one job at a time (--jobs 1): arms sharing a GPU "
                         "would get unequal work within their wall-clock budgets")  # fmt: skip
    # One job per (arm, seed), (c) first: it also pre-trains. Each job is one process with one
    # torch thread and its own CPU-time budget, so jobs side by side (--jobs) get the same work.
    jobs = sorted(((arm, seed, args) for seed in args.seeds for arm in args.arms),
                  key=lambda job: job[0] != "c")  # fmt: skip
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            done = list(pool.map(run_arm, *zip(*jobs, strict=True)))
    else:
        done = [run_arm(*job) for job in jobs]
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for (arm, _, _), scores in zip(jobs, done, strict=True):
        results[arm].append(scores)
    text = table(results, args.device)
    print(text)
    command = (
        f"python benchmarks/real_sample.py --budget {args.budget:g} --pretrain-budget "
        f"{args.pretrain_budget:g} --seeds {' '.join(map(str, args.seeds))} --size {args.size} "
        f"--jobs {args.jobs}"
    )
    if args.device != "cpu":
        command += f" --device {args.device} --workers {args.workers}"
    command += f" --max-epochs {args.max_epochs}" if args.max_epochs != MAX_EPOCHS else ""
    command += " --holdout" if args.holdout else ""
    command += f" --arms {' '.join(args.arms)}" if args.arms != list(ARMS) else ""
    command += "".join(f" --set {o}" for o in args.overrides)  # fmt: skip
    command += "".join(f" --common {o}" for o in args.common)  # fmt: skip
    clock = ("CPU seconds of one torch thread" if args.device == "cpu" else
             f"wall-clock seconds on {torch.cuda.get_device_name()}, one job at a time")  # fmt: skip
    args.out.write_text(
        f"Measured with `{command}` (means over the seeds; budgets in {clock}; "
        "per-class columns are IoU on the 4 "
        f"{'held-out training' if args.holdout else 'real validation'} images; 0.00 where a "
        "class is absent or never predicted):\n\n"
        f"{text}\n"
    )


if __name__ == "__main__":
    main()
