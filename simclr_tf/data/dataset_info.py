"""What every dataset source returns and raises: :class:`DatasetInfo`, :class:`DataError`, and
the class-balanced label-fraction sizes both sources share (:func:`subset_size`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from simclr_tf.errors import UserError

# Keyed-hash key for fraction selection; the seed is the other half.
FRACTION_KEY = 0x5EED_F4AC
# Label of an example outside the labelled fraction when ``load_split(..., unlabelled=True)``
# keeps it (distillation trains on every image, with labels only for the fraction).
UNLABELLED = -1


class DataError(UserError, ValueError):
    """A user-facing data problem; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a run needs to know about a dataset before reading it."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]  # examples per split (the subset size where a fraction applies)
    image_shape: tuple[int | None, int | None, int] | None  # fixed (H, W, 3) when known

    def num_examples(self, split: str) -> int:
        """Examples in ``split``; DataError naming the known splits otherwise."""
        if split not in self.split_sizes:
            raise DataError(
                f"Dataset '{self.name}' has no split '{split}'. Known splits: "
                f"{sorted(self.split_sizes)}. Pass one of these (e.g. --eval_split=...)."
            )
        return self.split_sizes[split]


def subset_size(class_counts: Sequence[int], fraction: float) -> list[int]:
    """Per-class subset sizes: ``max(1, round(fraction * n))`` (0 for an absent class)."""
    if fraction >= 1.0:
        return list(class_counts)
    return [max(1, round(fraction * n)) if n > 0 else 0 for n in class_counts]
