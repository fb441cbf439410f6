"""The shadow challenger's comparison: pixel agreement, class shares, the sample taken.

Pure functions and plain objects (numpy only), used by `roadseg.serve.shadow.ShadowRunner`: per
image the share of pixels where the challenger's mask gives the champion's class, both masks'
class-share vectors, the running `ShadowStats`, and the `Sampler` that decides which offered
images are shadowed (never more than `share` of them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels where two class-id masks of one image give the same class."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes: {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("empty masks")
    return float(np.count_nonzero(a == b)) / a.size


def class_share_vector(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of the mask's pixels in each class id 0..num_classes-1 (ids beyond are not
    counted; the vector sums to 1 when there are none)."""
    if mask.size == 0:
        raise ValueError("empty mask")
    counts = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    return counts / float(mask.size)


class Sampler:
    """Which offered images go to the challenger: image n (1-based) is taken when
    floor(n * share) grows, so after any number of images the taken ones are at most
    share x offered (exact rational arithmetic) and spread evenly. Thread-safe."""

    def __init__(self, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"shadow share {share} is not within 0..1")
        self.share = Fraction(share).limit_denominator(1_000_000)
        if self.share > Fraction(share):  # never round the share up
            self.share = Fraction(int(share * 1_000_000), 1_000_000)
        self.offered = 0
        self.taken = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            self.offered += 1
            if (self.offered * self.share.numerator) // self.share.denominator > self.taken:
                self.taken += 1
                return True
            return False


@dataclass
class ShadowStats:
    """Running comparison of the challenger with the champion."""

    class_names: Sequence[str]
    images: int = 0
    agreement_sum: float = 0.0
    min_agreement: float | None = None
    dropped: int = 0
    errors: int = 0
    champion_shares: np.ndarray = field(init=False)
    challenger_shares: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.champion_shares = np.zeros(len(self.class_names))
        self.challenger_shares = np.zeros(len(self.class_names))

    def add(self, champion: np.ndarray, challenger: np.ndarray) -> float:
        """One image's two masks: its agreement, added to the running figures."""
        agreement = pixel_agreement(champion, challenger)
        n = len(self.class_names)
        self.champion_shares += class_share_vector(champion, n)
        self.challenger_shares += class_share_vector(challenger, n)
        self.images += 1
        self.agreement_sum += agreement
        self.min_agreement = agreement if self.min_agreement is None else min(
            self.min_agreement, agreement)  # fmt: skip
        return agreement

    @property
    def agreement(self) -> float | None:
        """Mean over the shadowed images of their pixel agreement."""
        return self.agreement_sum / self.images if self.images else None

    def summary(self) -> dict[str, Any]:
        def shares(total: np.ndarray) -> dict[str, float]:
            mean = total / self.images if self.images else total
            return {
                name: round(float(v), 6) for name, v in zip(self.class_names, mean, strict=True)
            }

        return {
            "images": self.images,
            "agreement": None if self.agreement is None else round(self.agreement, 6),
            "min_agreement": None if self.min_agreement is None else round(self.min_agreement, 6),
            "dropped": self.dropped,
            "errors": self.errors,
            "class_shares": {
                "champion": shares(self.champion_shares),
                "challenger": shares(self.challenger_shares),
            },
        }
