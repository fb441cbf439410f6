"""Models and images shared by the serving benchmarks (predict, serve, stream).

`demo_checkpoint()` is the plain U-Net of the demo's size (base 16 at 96x160; the demo's default
is now `unet_effnet_lite0`, the `effnet` model of these benchmarks), trained briefly on
the 16 real BDD100k sample pairs (train + val, labels remapped to the 14 classes) so that its masks
have street-like boundaries: the post-processing cost depends on how many low-resolution cells
mix classes, and an untrained U-Net answers nearly one class everywhere. It is cached under
`~/.cache/roadseg-bench` (100 steps, ~6 minutes on a loaded 2-core machine). The base-64
reference model (31 M parameters at 368x640) is too slow to train here: it is random, with its
weights scaled (`roadseg.testing.random_unet`) so that its masks mix several classes; the
predict benchmark prints the share of mixed cells of each (8% for the demo model, ~100% for
the random one: the worst case of the mixed-cell path).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLE = Path(os.environ.get("ROADSEG_SAMPLE_DIR") or REPO.parent / "shared/data/bdd100k-sample")
CACHE = Path(os.environ.get("ROADSEG_BENCH_CACHE") or Path.home() / ".cache/roadseg-bench")


def sample_paths(root: Path = SAMPLE) -> list[Path]:
    paths = sorted((root / "images").rglob("*.jpg"))
    if not paths:
        raise SystemExit(f"no sample images under {root} (set ROADSEG_SAMPLE_DIR)")
    return paths


def sample_images(root: Path = SAMPLE) -> list[np.ndarray]:
    """The real 1280x720 sample images, RGB uint8, in a fixed order."""
    return [np.asarray(Image.open(p).convert("RGB")) for p in sample_paths(root)]


def _training_pairs(size: tuple[int, int]):
    import torch

    from roadseg.config import load_params
    from roadseg.data.transforms import normalize, resize_image, resize_mask

    lut = load_params().data.lookup_table()
    xs, ys = [], []
    for p in sample_paths():
        mask_path = Path(str(p).replace("images/10k", "labels/sem_seg/masks")).with_suffix(".png")
        image = np.asarray(Image.open(p).convert("RGB"))
        mask = lut.take(np.asarray(Image.open(mask_path)))
        for flip in (False, True):  # horizontal flips double the 16 pairs
            im, m = (image[:, ::-1], mask[:, ::-1]) if flip else (image, mask)
            xs.append(
                normalize(resize_image(np.ascontiguousarray(im), size), (0.4,) * 3, (0.25,) * 3)
            )
            ys.append(torch.from_numpy(resize_mask(np.ascontiguousarray(m), size).astype(np.int64)))
    return torch.stack(xs), torch.stack(ys)


def demo_checkpoint(steps: int = 100, base: int = 16, size: tuple[int, int] = (96, 160)) -> Path:
    """Path of the briefly trained demo U-Net checkpoint (trained on first use, then cached)."""
    path = CACHE / f"unet{base}-{size[0]}x{size[1]}-bdd-sample-{steps}.pt"
    if path.is_file():
        return path
    import torch

    from roadseg.config import load_params
    from roadseg.models import build_model
    from roadseg.models.io import save_checkpoint
    from roadseg.models.spec import ModelSpec

    params = load_params(
        overrides=[
            "model.name=unet",
            f"model.base_channels={base}",
            f"train.image_size=[{size[0]},{size[1]}]",
        ]
    )
    spec = ModelSpec.from_params(params, mean=(0.4,) * 3, std=(0.25,) * 3)
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=spec.num_classes, base_channels=base)
    x, y = _training_pairs(size)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (8,))
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"  training the demo model: step {step}/{steps}, loss {loss.item():.3f}")
    print(f"  trained in {time.perf_counter() - start:.0f} s -> {path}")
    save_checkpoint(path, {"model": model.state_dict(), "spec": spec.to_dict(), "epoch": 0})
    return path


def reference_checkpoint(base: int = 64, size: tuple[int, int] = (368, 640)) -> Path:
    """A random base-64 U-Net (31 M parameters) at 368x640 with scaled weights, cached."""
    from roadseg.testing import save_random_checkpoint

    path = CACHE / f"unet{base}-{size[0]}x{size[1]}-random.pt"
    if not path.is_file():
        save_random_checkpoint(
            path, base_channels=base, overrides=[f"train.image_size=[{size[0]},{size[1]}]"]
        )
    return path


def demo_random_checkpoint(base: int = 16, size: tuple[int, int] = (96, 160)) -> Path:
    """A random U-Net of the demo model's size (base 16 at 96x160), scaled weights, cached: the
    backend comparison needs the network's cost, not trained boundaries, and training the demo
    model costs ~6 minutes of a shared machine."""
    from roadseg.testing import save_random_checkpoint

    path = CACHE / f"unet{base}-{size[0]}x{size[1]}-random.pt"
    if not path.is_file():
        save_random_checkpoint(
            path, base_channels=base, overrides=[f"train.image_size=[{size[0]},{size[1]}]"]
        )
    return path


def effnet_checkpoint(base: int = 16, size: tuple[int, int] = (256, 448)) -> Path:
    """The pretrained-encoder model of *Real streets* (unet_effnet_lite0, base 16, 256x448): the
    ImageNet EfficientNet-Lite0 encoder and a random decoder, cached."""
    path = CACHE / f"effnet{base}-{size[0]}x{size[1]}-imagenet.pt"
    if path.is_file():
        return path
    import torch

    from roadseg.config import load_params
    from roadseg.models import IMAGENET_MEAN, IMAGENET_STD
    from roadseg.models.io import build_from_spec, save_checkpoint
    from roadseg.models.spec import ModelSpec

    params = load_params(overrides=["model.name=unet_effnet_lite0", f"model.base_channels={base}",
                                    f"train.image_size=[{size[0]},{size[1]}]"])  # fmt: skip
    spec = ModelSpec.from_params(params, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.manual_seed(0)
    model = build_from_spec(spec, pretrained=True)
    save_checkpoint(path, {"model": model.state_dict(), "spec": spec.to_dict(), "epoch": 0})
    return path


def demo_effnet_checkpoint() -> Path:
    """The architecture `make demo` trains by default (unet_effnet_lite0, base 16, at the demo's
    96x160): the ImageNet encoder and a random decoder, cached."""
    return effnet_checkpoint(size=(96, 160))


def mixed_cell_share(model, spec, images) -> float:
    """Share of low-resolution cells whose 4 corners disagree (what the mask path interpolates)."""
    import torch

    from roadseg.inference.predict import preprocess

    with torch.no_grad():
        a = model(preprocess(images, spec)).argmax(1)
    below = torch.cat([a[:, 1:], a[:, -1:]], 1)
    right = torch.cat([a[:, :, 1:], a[:, :, -1:]], 2)
    diag = torch.cat([below[:, :, 1:], below[:, :, -1:]], 2)
    return float(((a != below) | (a != right) | (a != diag)).float().mean())


# the benchmarks' --models names
MODELS = {
    "demo": demo_checkpoint,
    "demo-random": demo_random_checkpoint,
    "demo-effnet": demo_effnet_checkpoint,
    "base64": reference_checkpoint,
    "effnet": effnet_checkpoint,
}
