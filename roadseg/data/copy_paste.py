"""Copy-paste augmentation for thin classes (Ghiasi et al., 2021, "Simple Copy-Paste").

A few real images hold a few hundred pixels of a person or a sign between them; random crops
show them rarely and the network never learns them. Pasting the thin-class pixels of another
training image into this one multiplies how often they are seen, in new surroundings. A piece is
pasted where it was in its own frame (a sign stays high, a person on the ground), optionally
mirrored, before the usual scale/crop/flip; its pixels overwrite image and mask alike.

    piece = cut_piece(image, mask, class_ids)      # None: no pixel of those classes
    image, mask = paste(image, mask, piece, flip=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Piece:
    """The pixels of some classes in one frame: coordinates, colours and class ids."""

    shape: tuple[int, int]  # (H, W) of the frame they were cut from
    ys: np.ndarray  # (n,) uint16, or int32 in a frame wider than 65536
    xs: np.ndarray
    rgb: np.ndarray  # uint8 (n, 3)
    ids: np.ndarray  # uint8 (n,)


def class_ids(names: Sequence[str], table: Sequence[str]) -> list[int]:
    """The ids of class `names` in `table` (the model's class names), or a ValueError naming the
    unknown ones and the known."""
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(
            f"augment.copy_paste_classes: unknown classes {unknown}; the classes are {list(table)}"
        )
    return sorted({list(table).index(n) for n in names})


def cut_piece(image: np.ndarray, mask: np.ndarray, ids: Sequence[int]) -> Piece | None:
    """The pixels of `mask` whose class is in `ids`, with their colours; None when there are
    none."""
    ys, xs = np.nonzero(np.isin(mask, list(ids)))
    if ys.size == 0:
        return None
    coord = np.uint16 if max(mask.shape) <= 2**16 else np.int32  # half the memory of a piece
    return Piece(
        shape=(mask.shape[0], mask.shape[1]),
        ys=ys.astype(coord),
        xs=xs.astype(coord),
        rgb=image[ys, xs].copy(),
        ids=mask[ys, xs].copy(),
    )


def paste(
    image: np.ndarray, mask: np.ndarray, piece: Piece, *, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of `image` and `mask` with `piece` pasted at its own place (mirrored left-right
    with `flip`). The piece must come from a frame of the same size."""
    if piece.shape != mask.shape[:2] or image.shape[:2] != mask.shape[:2]:
        raise ValueError(
            f"a piece cut from a {piece.shape} frame cannot be pasted into {mask.shape[:2]}"
        )
    xs = mask.shape[1] - 1 - piece.xs if flip else piece.xs
    image, mask = image.copy(), mask.copy()
    image[piece.ys, xs] = piece.rgb
    mask[piece.ys, xs] = piece.ids
    return image, mask
