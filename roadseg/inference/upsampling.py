"""Bilinear upsampling of logits to full resolution without materialising it.

What `roadseg.inference.predict` needs from an (C, h_in, w_in) logit map at an (h, w) output, each equal
to (or, for the confidence, a stated estimate of) upsampling all C maps with `F.interpolate`
(bilinear, align_corners=False) and working there, in memory bounded per output pixel:
`argmax_mask` (the class-id mask and its class counts), `sampled_confidence` (mean max softmax)
and `class_probability` (one class's softmax, for the KITTI `/upload` route).
"""

from __future__ import annotations

import numpy as np
import torch

# Elements (classes x pixels) of one tile: a few float32 tiles (~4 MiB each) and their int64
# indices are alive at once, whatever the image size, so the only full-resolution arrays are
# the uint8 outputs (~5 bytes per output pixel in all, tests/unit/test_postprocess_memory.py).
TILE_ELEMENTS = 2**20
CONFIDENCE_SAMPLES = 2**14  # about this many pixels sampled for the confidence, at any size


def source_index(out_size: int, in_size: int, start: int, stop: int):
    """Bilinear (align_corners=False) source indices and weights for output positions start..stop.

    As `F.interpolate`: source position scale (dst + 0.5) - 0.5 (float32) clamped at 0.
    """
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    dst = torch.arange(start, stop, dtype=torch.float32)
    src = (scale * (dst + 0.5) - 0.5).clamp_(min=0.0)
    i0 = src.floor().long().clamp_(max=in_size - 1)
    lam = (src - i0.float()).clamp_(0.0, 1.0)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    return i0, i1, lam


def first_argmax(x: torch.Tensor) -> torch.Tensor:
    """First index of the maximum along dim 0, as `torch.max` on ties: (C, ...) -> (...) uint8."""
    c = x.shape[0]
    # uint8 ranks with class 0 highest: 2x faster than max(dim=0) on CPU
    rank = torch.arange(c - 1, -1, -1, dtype=torch.uint8).view(-1, *([1] * (x.dim() - 1)))
    hits = (x == x.amax(dim=0)).view(torch.uint8).mul_(rank)
    return (c - 1) - hits.amax(dim=0)


class Grid:
    """A (C, h_in, w_in) logit map and the bilinear source indices of an (h, w) output."""

    def __init__(self, lg: torch.Tensor, h: int, w: int) -> None:
        c, self.h_in, self.w_in = lg.shape
        self.h, self.w = h, w
        self.table = lg.reshape(c, -1)  # (C, h_in * w_in): gathers along dim 1
        self.y0, self.y1, self.ly = source_index(h, self.h_in, 0, h)
        self.x0, self.x1, self.lx = source_index(w, self.w_in, 0, w)

    def row_pass(self, src: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Horizontal pass (C, N): source row src[k] interpolated at output column cols[k]."""
        t, base = self.table, src * self.w_in
        lx = self.lx[cols]
        left = t.index_select(1, base + self.x0[cols]).mul_(1.0 - lx)
        return left.add_(t.index_select(1, base + self.x1[cols]).mul_(lx))

    def logits(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Upsampled logits (C, N) at output pixels (rows[k], cols[k]), in F.interpolate's order:
        ((v00 (1-lx) + v01 lx) (1-ly) + (v10 (1-lx) + v11 lx) ly)."""
        t, w_in = self.table, self.w_in
        i0, i1 = self.y0[rows] * w_in, self.y1[rows] * w_in
        j0, j1 = self.x0[cols], self.x1[cols]
        lx, ly = self.lx[cols], self.ly[rows]
        mx, my = 1.0 - lx, 1.0 - ly
        top = t.index_select(1, i0 + j0).mul_(mx).add_(t.index_select(1, i0 + j1).mul_(lx))
        bot = t.index_select(1, i1 + j0).mul_(mx).add_(t.index_select(1, i1 + j1).mul_(lx))
        return top.mul_(my).add_(bot.mul_(ly))


def argmax_mask(g: Grid, a: torch.Tensor, num_classes: int):
    """Full-resolution argmax mask of the upsampled logits, and its class counts.

    Bilinear interpolation is a convex combination of a source cell's 4 corner logits, so where
    the 4 corners share their argmax c, every output pixel in that cell has argmax c (l_c >= l_k
    at each corner holds for any convex combination). Such pixels are filled from the low-res
    argmax `a` (h_in, w_in) by repetition; only pixels in cells whose corners disagree ("mixed")
    are interpolated exactly (`_exact_rows`), in column bands and row groups of at most
    TILE_ELEMENTS / C mixed pixels.
    """
    below = torch.cat([a[1:], a[-1:]], 0)  # corner (y1, x0); the last row is its own neighbour
    right = torch.cat([a[:, 1:], a[:, -1:]], 1)  # (y0, x1)
    diag = torch.cat([below[:, 1:], below[:, -1:]], 1)  # (y1, x1)
    mixed = ((a != below) | (a != right) | (a != diag)).numpy()
    nr = torch.bincount(g.y0, minlength=g.h_in).numpy()  # output rows per source row
    nc = torch.bincount(g.x0, minlength=g.w_in).numpy()
    # y0 and x0 are non-decreasing, so repetition is the nearest-cell gather a[y0][:, x0]
    mask = np.repeat(np.repeat(a.numpy(), nr, axis=0), nc, axis=1)
    counts = np.bincount(a.numpy()[~mixed], weights=np.outer(nr, nc)[~mixed], minlength=num_classes)
    mixed[nr == 0] = False  # source rows no output row starts from (downsampling)
    mixed_cols = np.repeat(mixed, nc, axis=1)  # (h_in, w): output columns of mixed cells
    budget = max(1, TILE_ELEMENTS // g.table.shape[0])
    y0 = g.y0.numpy()
    for c0 in range(0, g.w, budget):
        band = mixed_cols[:, c0 : c0 + budget]
        ends = np.cumsum(band.sum(axis=1)[y0])  # mixed pixels up to each output row
        r0 = 0
        while r0 < g.h:
            done = ends[r0 - 1] if r0 else 0
            r1 = max(r0 + 1, int(np.searchsorted(ends, done + budget, side="right")))
            exact, pos = _exact_rows(g, band, c0, r0, min(r1, g.h))
            mask.reshape(-1)[pos] = exact
            counts += np.bincount(exact, minlength=num_classes)
            r0 = r1
    return mask, counts


def _exact_rows(g: Grid, band: np.ndarray, c0: int, r0: int, r1: int):
    """Argmax of the upsampled logits at the mixed pixels of output rows r0..r1 of a band.

    Separable, as F.interpolate: the horizontal pass once per (source row, mixed column), then
    the vertical pass per pixel. Returns the class ids (uint8) and flat positions in the mask.
    """
    y0 = g.y0[r0:r1].numpy()
    lo = int(y0[0])
    sub = band[lo : int(y0[-1]) + 1]
    p_row, p_col = np.nonzero(sub)  # row-major: each source row's mixed columns in order
    n_i = sub.sum(axis=1)
    n_r = n_i[y0 - lo]  # mixed pixels of each output row
    if p_row.size == 0 or n_r.sum() == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    src = torch.from_numpy(p_row + lo)
    cols = torch.from_numpy(p_col + c0)
    top = g.row_pass(src, cols)
    bot = g.row_pass((src + 1).clamp_(max=g.h_in - 1), cols)
    start = np.cumsum(n_i) - n_i  # where each source row's columns start in P
    idx = np.arange(n_r.sum()) + np.repeat(start[y0 - lo] - (np.cumsum(n_r) - n_r), n_r)
    ly = torch.from_numpy(np.repeat(g.ly[r0:r1].numpy(), n_r))
    idx_t = torch.from_numpy(idx)
    up = top.index_select(1, idx_t).mul_(1.0 - ly).add_(bot.index_select(1, idx_t).mul_(ly))
    pos = np.repeat(np.arange(r0, r1) * g.w, n_r) + p_col[idx] + c0
    return first_argmax(up).numpy(), pos


def _sample_blocks(n: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres and sizes of the blocks of s positions (the last one shorter) covering 0..n-1."""
    starts = torch.arange(0, n, s)
    sizes = (n - starts).clamp_(max=s)
    return starts + sizes // 2, sizes.double()


def sampled_confidence(g: Grid) -> float:
    """Mean max softmax over the output pixels, estimated by the midpoint rule on s x s blocks.

    Each block of s x s output pixels (shorter at the right and bottom edges) is represented by
    its centre pixel, weighted by its pixel count; s = floor(sqrt(h w / 2^14)): about 2^14
    samples whatever the logits' size (s = 1, exact, under 4 x 2^14 output pixels). One sample
    per source cell instead cost 21 ms an image at 1280x720 for 256x448 logits and 208 ms for
    368x640 (benchmarks/confidence_sampling.py), for no accuracy a monitor needs: within 2e-4 of
    the full-resolution mean on real models' logits (benchmarks/predict_throughput.py prints
    it), ~2e-3 on noisy maps from 96x160 to 368x640 (tests). Monitoring.
    """
    s = max(1, int(np.sqrt(g.h * g.w / CONFIDENCE_SAMPLES)))
    rows, row_w = _sample_blocks(g.h, s)
    cols, col_w = _sample_blocks(g.w, s)
    total = 0.0
    per_chunk = max(1, TILE_ELEMENTS // (g.table.shape[0] * cols.numel()))
    for k in range(0, rows.numel(), per_chunk):
        r = rows[k : k + per_chunk]
        up = g.logits(r.repeat_interleave(cols.numel()), cols.repeat(r.numel()))
        up.sub_(up.amax(dim=0)).exp_()
        top = up.sum(dim=0).reciprocal_().view(r.numel(), -1).double()
        total += float(row_w[k : k + per_chunk] @ top @ col_w)
    return total / (g.h * g.w)


def class_probability(lg: torch.Tensor, h: int, w: int, k: int) -> np.ndarray:
    """Softmax probability of class k of the logits upsampled bilinearly to (h, w),
    scaled to 0-255; computed in rows x columns tiles, so memory stays bounded for any size."""
    c, h_in, _ = lg.shape
    out = torch.empty((h, w), dtype=torch.uint8)
    tile_w = max(1, min(w, TILE_ELEMENTS // (c * h_in)))
    for c0 in range(0, w, tile_w):
        c1 = min(w, c0 + tile_w)
        x0, x1, lx = source_index(w, lg.shape[2], c0, c1)
        # Horizontal pass on every source row (small: h_in rows), then vertical per row chunk.
        hx = lg.index_select(2, x0).mul_(1.0 - lx).add_(lg.index_select(2, x1).mul_(lx))
        rows = max(1, TILE_ELEMENTS // (c * (c1 - c0)))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            y0, y1, ly = source_index(h, h_in, r0, r1)
            ly = ly.view(1, -1, 1)
            up = hx.index_select(1, y0).mul_(1.0 - ly).add_(hx.index_select(1, y1).mul_(ly))
            up.sub_(up.amax(dim=0)).exp_()
            p = up[k].div_(up.sum(dim=0))
            out[r0:r1, c0:c1] = p.mul_(255.0).round_().to(torch.uint8)
    return out.numpy()
