"""Real streets: train on the 12 real training images of the shared BDD100k sample, evaluate on
its 4 real validation images at full resolution (1280x720), for three arms at an equal
training budget of CPU time and the same seeds:

    (a) the plain U-Net from scratch,
    (b) the U-Net over the ImageNet-pretrained EfficientNet-Lite0 encoder (`unet_effnet_lite0`),
    (c) (b) fine-tuned from a pre-training on synthetic scenes (`train.init_from`).

    python benchmarks/real_sample.py [--budget 75] [--seeds 0 1] [--out benchmarks/real_sample.md]

One torch thread, so CPU time is work done, not threads spinning while another job holds the
cores; about 11 minutes on the 2-core CPU machine when it is not shared. Each arm trains epoch by epoch
(`train_model(..., max_epochs_this_run=1)`, resumed) until its budget is spent, with its
schedule sized to the budget (`train_for`); the last checkpoint is evaluated (never the best by
validation mIoU: the 4 validation images are the test here). The synthetic pre-training of (c)
has its own budget, like ImageNet's for (b), and is not counted in the arm's. Inference img/s:
`predict` on the 4 real 1280x720 validation images, one at a time, in the same run.

`--arms b --set train.batch_size=2 ...` trains only some arms with extra overrides for the
EfficientNet arms: recipe trials (the table's figures come from all arms in one run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
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
TRAIN_SIZE = "[256,448]"  # (H, W): a 720p frame at ~1/3, where poles and signs stay a few px wide
EFFNET = ["model.name=unet_effnet_lite0", "model.base_channels=16"]
ARMS = {
    "a": ("U-Net, from scratch", ["model.name=unet", "model.base_channels=16"]),
    "b": ("EffNet-Lite0 U-Net, ImageNet encoder", EFFNET),
    "c": ("(b) fine-tuned from synthetic scenes", EFFNET),
}
MAX_EPOCHS = 200
QUIET = {"tracking_uri": None, "progress": False, "echo": lambda _line: None}
COMMON = [f"train.image_size={TRAIN_SIZE}", "train.batch_size=4",
          "train.warmup_epochs=1", "train.early_stopping_patience=1000", "train.lr=0.003",
          "data.num_workers=0", "train.sample_every=1000"]  # fmt: skip


def train_for(
    overrides: list[str], data_dir: Path, out: Path, budget: float
) -> tuple[Path, int, float]:
    """Train until `budget` CPU seconds are spent; (last checkpoint, epochs, CPU seconds).

    CPU time (this process's, all threads), not wall-clock: on a shared machine another job's
    load would otherwise decide how many steps an arm gets. The second epoch is timed (the
    first also builds the model and reads the weights); the schedule is then set to the epochs
    that fit the budget, so every arm's learning rate decays to zero by the end of its budget
    whatever its speed (a fixed epoch count would leave a slow arm at its peak rate). Both timed
    epochs run at the peak rate: warm-up, then decay over MAX_EPOCHS, which has barely begun."""

    def params_for(epochs: int):
        return load_params(overrides=[*COMMON, *overrides, f"train.epochs={epochs}",
                                      f"train.checkpoint_dir={out}"])  # fmt: skip

    t0 = time.process_time()
    for epoch in range(2):
        t1 = time.process_time()
        train_model(params_for(MAX_EPOCHS), data_dir, resume=epoch > 0, max_epochs_this_run=1,
                    **QUIET)  # fmt: skip
    left = budget - (time.process_time() - t0)
    total = int(min(MAX_EPOCHS, 2 + max(0, round(left / (time.process_time() - t1)))))
    params, epochs = params_for(total), 2
    while epochs < total:
        train_model(params, data_dir, resume=True, max_epochs_this_run=1, **QUIET)
        epochs += 1
    return out / "last.pt", epochs, time.process_time() - t0


def score(checkpoint: Path) -> dict:
    """Full-resolution scores on the real validation images, and inference img/s."""
    from roadseg.data.bdd100k import read_image
    from roadseg.data.dataset import list_split

    params = load_params()
    model, spec, _ = load_model(checkpoint)
    scores = evaluate_model(model, spec, SAMPLE, params, "val", device="cpu", progress=False)
    images = [read_image(s.image) for s in list_split(SAMPLE, params, "val")]
    predict(model, images[:1], spec, "cpu")  # warm-up
    t0 = time.perf_counter()
    for image in images:
        predict(model, [image], spec, "cpu")
    scores["img_per_s"] = len(images) / (time.perf_counter() - t0)
    return scores


def synthetic_pretraining(tmp: Path, seed: int, budget: float, extra: list[str]) -> Path:
    from roadseg.data.synth import synthesize_dataset

    data = tmp / "synth"
    if not data.is_dir():
        synthesize_dataset(data, train=48, val=8, test=0, height=360, width=640, seed=0)
    overrides = [*ARMS["b"][1], *extra, f"train.seed={seed}"]
    return train_for(overrides, data, tmp / f"pre-{seed}", budget)[0]


def table(results: dict[str, list[dict]]) -> str:
    names = [c["name"] for c in next(iter(results.values()))[0]["per_class"]]
    head = ["arm", "mIoU", "pixel acc.", "epochs", "train CPU s", "img/s 720p", *names]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=75.0, help="training CPU s per arm")
    parser.add_argument("--pretrain-budget", type=float, default=45.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides",
                        help="extra params overrides for the EffNet arms (b) and (c): recipe trials")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/real_sample.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (SAMPLE / "images/10k/train").is_dir():
        raise SystemExit(f"the real sample is not at {SAMPLE} (set ROADSEG_SAMPLE_DIR)")
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in args.seeds:
            if "c" in args.arms:
                pre = synthetic_pretraining(tmp, seed, args.pretrain_budget, args.overrides)
            for arm in args.arms:
                label, overrides = ARMS[arm]
                extra = [f"train.init_from={pre}"] if arm == "c" else []
                extra += args.overrides if arm != "a" else []
                ckpt, epochs, seconds = train_for([*overrides, *extra, f"train.seed={seed}"],
                                                  SAMPLE, tmp / f"{arm}-{seed}", args.budget)  # fmt: skip
                scores = score(ckpt) | {"epochs": epochs, "seconds": seconds}
                results[arm].append(scores)
                print(f"seed {seed} ({arm}) {label}: mIoU {scores['miou']:.3f}, pixel acc "
                      f"{scores['pixel_accuracy']:.3f}, {epochs} epochs in {seconds:.0f} CPU s, "
                      f"{scores['img_per_s']:.2f} img/s", flush=True)  # fmt: skip
    text = table(results)
    print(text)
    command = f"python benchmarks/real_sample.py --budget {args.budget:g} --pretrain-budget " \
              f"{args.pretrain_budget:g} --seeds {' '.join(map(str, args.seeds))}"  # fmt: skip
    args.out.write_text(
        f"Measured with `{command}` (means over the seeds; budgets in CPU seconds of one torch "
        "thread; per-class columns are IoU on the 4 "
        "real validation images; 0.00 where a class is absent or never predicted):\n\n"
        f"{text}\n"
    )


if __name__ == "__main__":
    main()
