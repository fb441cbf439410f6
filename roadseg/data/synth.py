"""Procedural road scenes written in the exact BDD100k 10k semantic-segmentation layout.

Each scene has a horizon, a perspective road with lane marks between sidewalks, a terrain verge,
a façade line of buildings / vegetation / walls / fences, then objects painted far to near (poles
with traffic lights and signs, trees, vehicles, persons, riders on bicycles or motorcycles, now and
then a train). Every class keeps one base colour with per-class texture, per-object tint, lighting
and sensor noise, so a small network can learn it but not trivially. Rare classes are forced into
images in turn, so every split with at least seven images holds all 19 classes; an ego-vehicle
hood gives ignore (255) pixels. Same seed, same bytes::

    roadseg data synth --out data/synthetic --train 24 --val 8 --test 4
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from roadseg.data.bdd100k import COLORMAP_DIR, IMAGE_DIR, SPLITS, write_mask

# BDD100k train ids (Cityscapes order), used by name for readability.
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR,
 TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)  # fmt: skip
IGNORE = 255
# Appearance ids beyond the classes: looks that share a label with a class.
LANE, GLASS, HOOD, TYRE = 19, 20, 21, 22
APPEARANCE = np.array(
    [
        [95, 95, 100], [190, 175, 155], [150, 100, 80], [210, 200, 130], [120, 75, 35],
        [35, 35, 45], [245, 160, 20], [235, 235, 50], [55, 125, 40], [150, 190, 90],
        [135, 180, 235], [215, 40, 60], [250, 120, 190], [40, 55, 175], [110, 45, 150],
        [0, 150, 145], [175, 0, 90], [245, 245, 245], [140, 230, 230],
        [225, 225, 215], [50, 60, 80], [25, 25, 28], [18, 18, 18],
    ],
    dtype=np.float32,
)  # fmt: skip
# Per-class texture strength of the smooth noise field (vegetation is the most textured).
TEXTURE = np.zeros(256, np.float32)
TEXTURE[[ROAD, SIDEWALK, BUILDING, WALL, VEG, TERRAIN, SKY]] = [
    0.08,
    0.1,
    0.12,
    0.1,
    0.4,
    0.25,
    0.06,
]
# The official BDD100k colormap (params.yaml data.source_classes holds the same; callers pass it).
BDD100K_COLORS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip
RARE = (
    TRAIN,
    RIDER,
    MOTORCYCLE,
    BICYCLE,
    BUS,
    TRUCK,
    LIGHT,
    SIGN,
    WALL,
    FENCE,
    TERRAIN,
    PERSON,
    POLE,
)


class _Canvas:
    """Label, appearance and shade maps painted together (painter's algorithm)."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.lab = np.full((h, w), SKY, np.uint8)
        self.app = np.full((h, w), SKY, np.uint8)
        self.shade = np.ones((h, w), np.float32)

    def paint(self, where: np.ndarray | tuple, cls: int, app: int | None = None, tone: float = 1.0):
        self.lab[where], self.app[where], self.shade[where] = cls, cls if app is None else app, tone

    def rect(self, y0, y1, x0, x1, cls, app=None, tone=1.0) -> None:
        y0, y1 = max(int(np.rint(y0)), 0), min(int(np.rint(y1)), self.h)
        x0, x1 = max(int(np.rint(x0)), 0), min(int(np.rint(x1)), self.w)
        if y1 > y0 and x1 > x0:
            self.paint((slice(y0, y1), slice(x0, x1)), cls, app, tone)

    def ellipse(self, cy, cx, ry, rx, cls, app=None, tone=1.0, ring=0.0) -> None:
        y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, self.h)
        x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, self.w)
        if y1 <= y0 or x1 <= x0:
            return
        yy, xx = np.ogrid[y0:y1, x0:x1]
        d = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2
        inside = (d <= 1.0) & (d >= ring)
        sub = (slice(y0, y1), slice(x0, x1))
        self.lab[sub][inside] = cls
        self.app[sub][inside] = cls if app is None else app
        self.shade[sub][inside] = tone


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BILINEAR))


def _background(c: _Canvas, rng: np.random.Generator, g: dict) -> None:
    """Road, sidewalks, verge, and the façade line (buildings, vegetation, walls, fences)."""
    h, w, yh, vx = c.h, c.w, g["yh"], g["vx"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.clip((yy - yh) / (h - yh), 1e-3, None)  # ground depth: 0 at the horizon, 1 at the bottom
    ground = yy > yh
    x_at = {k: vx + (g[k] - vx) * t for k in ("rl", "rr", "sl", "sr", "bl", "br")}
    c.paint(ground, TERRAIN)
    c.paint(ground & (xx >= x_at["sl"]) & (xx <= x_at["sr"]), SIDEWALK)
    c.paint(ground & (xx >= x_at["rl"]) & (xx <= x_at["rr"]), ROAD)
    m = t * g["mpp"]  # pixels per metre at each row
    centre = vx + (g["lane"] - vx) * t
    depth = 10.0 / t
    dash = ground & (np.abs(xx - centre) < np.maximum(0.08 * m, 0.5)) & ((depth % 9.0) < 3.5)
    edge = ground & (
        (np.abs(xx - x_at["rl"] - 0.3 * m) < 0.06 * m)
        | (np.abs(xx - x_at["rr"] + 0.3 * m) < 0.06 * m)
    )
    c.paint(dash | edge, ROAD, LANE)
    # Façade line: per column, the depth where the building line crosses it.
    col = np.arange(w, dtype=np.float32)
    left = col < vx
    tb = np.where(left, (vx - col) / max(vx - g["bl"], 1), (col - vx) / max(g["br"] - vx, 1))
    tb = np.clip(tb, 1e-3, 1.5)
    base = yh + tb * (h - yh)
    mcol = tb * g["mpp"]
    z = 10.0 / tb
    kinds = rng.choice(
        4, size=(2, 64), p=[0.5, 0.25, 0.13, 0.12]
    )  # building, vegetation, gap, hedge
    height = rng.uniform(6, 30, size=(2, 64))
    seg = np.minimum((np.log(z) / g["seg_len"]).astype(int), 63)  # screen-size segments
    side = left.astype(int)
    kind, hgt = kinds[side, seg], height[side, seg]
    bumpy = np.where(kind == 1, 0.35 * hgt + 2 * np.sin(z * 2.1 + g["phase"]), hgt)
    top = base - bumpy * mcol
    top = np.where(kind == 2, base, top)
    rows = yy < base[None, :]
    facade = rows & (yy >= top[None, :]) & (kind != 2)[None, :]
    c.paint(facade & (kind == 0)[None, :], BUILDING, tone=1.0)
    c.paint(facade & (kind == 1)[None, :], VEG)
    c.paint(facade & (kind == 3)[None, :], VEG, tone=0.8)
    # Windows: a grid in façade coordinates (depth along z, height above the base).
    up = (base[None, :] - yy) / np.maximum(mcol[None, :], 1e-3)
    win = facade & (kind == 0)[None, :] & ((up % 3.2) > 1.4) & ((z % 3.0) > 1.2)[None, :]
    c.paint(win & (up > 1.0), BUILDING, GLASS)
    # Low walls / fences in front of some segments.
    low = rng.choice(3, size=(2, 64), p=[0.55, 0.25, 0.2])[side, seg]  # none, wall, fence
    low_h = np.where(low == 1, 1.3, 1.8) * mcol
    band = rows & (yy >= base[None, :] - low_h[None, :])
    c.paint(band & (low == 1)[None, :], WALL)
    slats = (((z * 4.0) % 1.0) < 0.45)[None, :] | ((up % 0.9) < 0.15)
    c.paint(band & (low == 2)[None, :] & slats, FENCE)


def _objects(c: _Canvas, rng: np.random.Generator, g: dict, forced: set[int]) -> None:
    """Things standing on the ground, painted far to near."""
    todo: list[tuple[float, str, float]] = []  # (depth t, kind, lateral u in its band)
    n = {
        "car": rng.integers(1, 6), "truck": rng.random() < 0.35, "bus": rng.random() < 0.25,
        "person": rng.integers(0, 4), "bicycle": rng.random() < 0.3, "motorcycle": rng.random() < 0.25,
        "pole": rng.integers(1, 5), "tree": rng.integers(0, 3), "train": rng.random() < 0.05,
    }  # fmt: skip
    for cls, kind in ((TRUCK, "truck"), (BUS, "bus"), (BICYCLE, "bicycle"), (RIDER, "bicycle"),
                      (MOTORCYCLE, "motorcycle"), (TRAIN, "train"), (PERSON, "person")):  # fmt: skip
        if cls in forced:
            n[kind] = max(int(n[kind]), 1)
    for kind, k in n.items():
        for _ in range(int(k)):
            todo.append((rng.uniform(0.2, 0.95), kind, rng.uniform(0.15, 0.85)))
    lights, signs = LIGHT in forced, SIGN in forced
    for t, kind, u in sorted(todo):
        yb = g["yh"] + t * (c.h - g["yh"])
        m = t * g["mpp"]
        rl, rr = (g["vx"] + (g[k] - g["vx"]) * t for k in ("rl", "rr"))
        sl, sr = (g["vx"] + (g[k] - g["vx"]) * t for k in ("sl", "sr"))
        right = rng.random() < 0.5
        walk = (rr + sr) / 2 if right else (rl + sl) / 2
        x = rl + u * (rr - rl)
        tint = rng.uniform(0.85, 1.15)
        if kind in ("car", "truck", "bus"):
            cls, wd, ht = {
                "car": (CAR, 1.8, 1.5),
                "truck": (TRUCK, 2.5, 3.3),
                "bus": (BUS, 2.6, 3.2),
            }[kind]
            x0, x1, y0 = x - wd * m / 2, x + wd * m / 2, yb - ht * m
            c.rect(y0, yb - 0.25 * m, x0, x1, cls, tone=tint)
            glass = (y0 + 0.1 * ht * m, y0 + 0.4 * ht * m) if kind != "truck" else (y0, y0)
            c.rect(*glass, x0 + 0.1 * wd * m, x1 - 0.1 * wd * m, cls, GLASS)
            for wx in (x0 + 0.1 * wd * m, x1 - 0.35 * wd * m):
                c.rect(yb - 0.45 * m, yb, wx, wx + 0.25 * wd * m, cls, TYRE)
        elif kind == "train":
            x0 = sl - 14 * m if not right else sr
            c.rect(yb - 3.8 * m, yb, x0, x0 + 14 * m, TRAIN, tone=tint)
            c.rect(yb - 3.0 * m, yb - 2.0 * m, x0 + m, x0 + 13 * m, TRAIN, GLASS)
        elif kind == "person":
            px = walk + rng.uniform(-0.3, 0.3) * abs(sr - rr if right else rl - sl)
            c.rect(yb - 1.45 * m, yb, px - 0.25 * m, px + 0.25 * m, PERSON, tone=tint)
            c.ellipse(yb - 1.6 * m, px, 0.15 * m, 0.13 * m, PERSON, tone=tint)
        elif kind in ("bicycle", "motorcycle"):
            cls, r = (BICYCLE, 0.35) if kind == "bicycle" else (MOTORCYCLE, 0.33)
            for wx in (x - 0.6 * m, x + 0.6 * m):
                c.ellipse(yb - r * m, wx, r * m, r * m, cls, ring=0.3 if cls == BICYCLE else 0.0)
            body = (
                (yb - 0.8 * m, yb - 0.45 * m) if cls == BICYCLE else (yb - 0.95 * m, yb - 0.3 * m)
            )
            c.rect(*body, x - 0.6 * m, x + 0.6 * m, cls, tone=tint)
            c.rect(yb - 1.75 * m, yb - 0.8 * m, x - 0.25 * m, x + 0.2 * m, RIDER, tone=tint)
            c.ellipse(yb - 1.9 * m, x, 0.15 * m, 0.13 * m, RIDER)
        elif kind == "pole":
            px = (sr - 0.15 * abs(sr - rr)) if right else (sl + 0.15 * abs(rl - sl))
            pw = max(0.25 * m, 1.5)
            c.rect(yb - 6.5 * m, yb, px - pw / 2, px + pw / 2, POLE)
            if lights or rng.random() < 0.4:
                lights, arm = False, (-1.5 if right else 1.5) * m
                c.rect(yb - 6.5 * m, yb - 6.2 * m, min(px, px + arm), max(px, px + arm), POLE)
                c.rect(yb - 6.6 * m, yb - 5.2 * m, px + arm - 0.3 * m, px + arm + 0.3 * m, LIGHT)
                c.ellipse(
                    yb - 6.25 * m, px + arm, 0.12 * m, 0.12 * m, LIGHT, tone=rng.uniform(0.7, 1.3)
                )
            if signs or rng.random() < 0.45:
                signs = False
                c.rect(yb - 3.8 * m, yb - 2.8 * m, px - 0.5 * m, px + 0.5 * m, SIGN, tone=tint)
        elif kind == "tree":
            px = sr + 0.6 * abs(sr - rr) if right else sl - 0.6 * abs(rl - sl)
            c.rect(yb - 2.5 * m, yb, px - 0.15 * m, px + 0.15 * m, VEG, tone=0.55)
            c.ellipse(yb - 3.8 * m, px, 1.6 * m, 1.3 * m, VEG, tone=tint)


def render_scene(h: int, w: int, rng: np.random.Generator, forced: set[int] = frozenset()):
    """One scene: (RGB uint8 HxWx3, train-id labels uint8 HxW)."""
    yh = h * rng.uniform(0.36, 0.48)
    vx = w * rng.uniform(0.38, 0.62)
    rl, rr = sorted(w * rng.uniform([-0.15, 0.85], [0.15, 1.15]))
    sw = w * rng.uniform(0.15, 0.35)
    verge = 0.0 if (rng.random() < 0.35 and TERRAIN not in forced) else w * rng.uniform(0.2, 0.6)
    g = {
        "yh": yh, "vx": vx, "rl": rl, "rr": rr, "sl": rl - sw, "sr": rr + sw,
        "bl": rl - sw - verge, "br": rr + sw + verge, "lane": (rl + rr) / 2 + rng.uniform(-0.1, 0.1) * w,
        "mpp": (rr - rl) / 8.5, "seg_len": rng.uniform(0.15, 0.4), "phase": rng.uniform(0, 6.3),
    }  # fmt: skip
    c = _Canvas(h, w)
    _background(c, rng, g)
    if WALL in forced or FENCE in forced:  # a sure stretch of wall and fence near the camera
        m = g["mpp"]
        c.rect(h - 1.6 * m, h, 0, 0.08 * w, WALL)
        c.rect(h - 2.0 * m, h, 0.92 * w, w, FENCE)
    _objects(c, rng, g, set(forced))
    if rng.random() < 0.4 or IGNORE in forced:  # ego-vehicle hood, unlabelled as in BDD100k
        c.ellipse(h * 1.15, w / 2, h * rng.uniform(0.2, 0.3), w * 0.7, IGNORE, HOOD)
    # Appearance: base colour x shade x texture x lighting, plus sensor noise.
    tex = 1.0 + TEXTURE[c.lab] * _smooth_noise(rng, h, w, max(h // 24, 2))
    sky_grad = np.where(c.lab == SKY, 0.8 + 0.35 * np.arange(h)[:, None] / h, 1.0)
    light = rng.uniform(0.7, 1.25) * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    img = APPEARANCE[c.app] * (c.shade * tex * sky_grad)[..., None] * light
    img += rng.normal(0.0, 7.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), c.lab


def colormap_palette(colors: list[tuple[int, int, int]]) -> list[int]:
    """768-entry PNG palette: index = train id, unused indices (and 255) black, as in BDD100k."""
    flat = [v for rgb in colors for v in rgb]
    return flat + [0] * (768 - len(flat))


def synthesize_dataset(
    out: Path | str, *, train: int, val: int, test: int, height: int, width: int, seed: int,
    palette: list[tuple[int, int, int]] | None = None,
) -> dict:  # fmt: skip
    """Write a synthetic dataset under `out` in the BDD100k layout (test: images only).

    Args:
        out: dataset root (created).
        train, val, test: images per split.
        height, width: image size in pixels.
        seed: same seed, same bytes.
        palette: colormap colours per train id (default: those of params.yaml).

    Returns:
        Summary: out, splits {split: count}, size, seed, pixel_counts (19 classes), ignore_pixels.
    """
    if min(height, width) < 32:
        raise ValueError(f"image size {height}x{width} is too small (min 32)")
    out = Path(out)
    pal = colormap_palette(palette or BDD100K_COLORS)
    counts = np.zeros(256, np.int64)
    splits = {}
    for si, (split, n) in enumerate(zip(SPLITS, (train, val, test), strict=True)):
        if n <= 0:
            continue
        splits[split] = n
        (out / IMAGE_DIR / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, si, i])
            forced = {RARE[(2 * i) % len(RARE)], RARE[(2 * i + 1) % len(RARE)]}
            forced |= {IGNORE} if i == 0 else set()
            img, lab = render_scene(height, width, rng, forced)
            stem = f"synth{seed:03d}-{split}-{i:05d}"
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=92)
            (out / IMAGE_DIR / split / f"{stem}.jpg").write_bytes(buf.getvalue())
            if split == "test":
                continue
            counts += np.bincount(lab.ravel(), minlength=256)
            write_mask(out / "labels/sem_seg/masks" / split / f"{stem}.png", lab)
            cm = Image.fromarray(lab, mode="P")
            cm.putpalette(pal)
            (out / COLORMAP_DIR / split).mkdir(parents=True, exist_ok=True)
            cm.save(out / COLORMAP_DIR / split / f"{stem}.png", compress_level=1)
    return {
        "out": str(out), "splits": splits, "height": height, "width": width, "seed": seed,
        "pixel_counts": counts[:19].tolist(), "ignore_pixels": int(counts[IGNORE]),
    }  # fmt: skip
