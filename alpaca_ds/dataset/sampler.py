"""Which examples go into each micro-batch of each rank: deterministic per (seed, epoch), resumable mid-epoch.

A micro-batch is a list of rows; a row is a list of example indices: one example per row when batching pads
to the longest example (`random`, as Alpaca, or `length_grouped`), several when `packed`.
Every epoch covers every example: the last optimizer step (micro x world x accumulation rows) is filled by
wrapping around to the epoch's start, as torch's DistributedSampler does, so every step has the full global batch.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator

import numpy as np

from alpaca_ds.common.errors import UserError

MODES = ("random", "length_grouped", "packed")


class MicroBatchSampler:
    def __init__(
        self,
        lengths: np.ndarray,
        micro_batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        mode: str = "random",
        pack_length: int | None = None,
        accumulation: int = 1,
        group_steps: int = 50,
        pack_window: int = 8192,
    ):
        if mode not in MODES:
            raise UserError(f"batching mode {mode!r}: expected one of {', '.join(MODES)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        longest = int(np.max(lengths)) if len(lengths) else 0
        if mode == "packed" and (pack_length is None or longest > pack_length):
            raise UserError(
                f"packed batching needs a pack_length of at least the longest example ({longest} "
                f"tokens), got {pack_length}; set it to at least the dataset's max_length"
            )
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.micro, self.world, self.rank, self.seed, self.mode = micro_batch_size, world_size, rank, seed, mode
        self.pack_length, self.group_steps, self.pack_window = pack_length, group_steps, pack_window
        self.accumulation = accumulation
        self.epoch = 0
        self.position = 0  # micro-batches of this rank already consumed in this epoch
        self._cache: tuple[int, list[list[list[int]]]] | None = None

    @classmethod
    def from_config(
        cls, lengths: np.ndarray, data, micro_batch_size: int, accumulation: int, *, world_size: int, rank: int
    ) -> MicroBatchSampler:
        """The sampler a training config's `data` section asks for (its seed, batching mode and pack_length)."""
        return cls(
            lengths,
            micro_batch_size,
            world_size=world_size,
            rank=rank,
            seed=data.seed,
            mode=data.batching,
            pack_length=data.pack_length,
            accumulation=accumulation,
        )

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch`; staying in the current epoch keeps the position, so a resumed run continues."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "mode": self.mode,
            "world_size": self.world,
            "micro_batch_size": self.micro,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "mode", "world_size", "micro_batch_size"):
            if state[key] != mine[key]:
                raise UserError(
                    f"cannot resume: the checkpoint's sampler has {key}={state[key]!r}, this run "
                    f"{mine[key]!r}; resume with the same settings"
                )
        self.epoch, self.position = state["epoch"], state["position"]

    def __len__(self) -> int:
        return len(self.epoch_batches(self.epoch))

    def __iter__(self) -> Iterator[list[list[int]]]:
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            self.position += 1
            yield batches[self.position - 1]

    def epoch_batches(self, epoch: int) -> list[list[list[int]]]:
        """This rank's micro-batches for `epoch`, in order."""
        if self._cache is None or self._cache[0] != epoch:
            rows = self._global_rows(np.random.default_rng([self.seed, epoch]))
            step = self.micro * self.world
            mine = [
                rows[s + self.rank * self.micro : s + (self.rank + 1) * self.micro] for s in range(0, len(rows), step)
            ]
            self._cache = (epoch, mine)
        return self._cache[1]

    def _global_rows(self, rng: np.random.Generator) -> list[list[int]]:
        order = rng.permutation(len(self.lengths))
        step = self.micro * self.world
        if self.mode == "packed":
            rows = [
                row
                for w in range(0, len(order), self.pack_window)
                for row in pack(order[w : w + self.pack_window], self.lengths, self.pack_length)
            ]
            rows = [rows[i] for i in rng.permutation(len(rows))]
        else:
            rows = [[int(i)] for i in order]
        fill = step * self.accumulation
        rows += [rows[i % len(rows)] for i in range((-len(rows)) % fill)]  # wrap around to fill the last step
        if self.mode == "length_grouped":
            # Sort within megabatches of `group_steps` global steps, then shuffle the steps: each step holds
            # examples of similar length (little padding) and the order of steps stays random.
            mega = step * self.group_steps
            rows = [
                r
                for m in range(0, len(rows), mega)
                for r in sorted(rows[m : m + mega], key=lambda r: -self.lengths[r[0]])
            ]
            steps = [rows[s : s + step] for s in range(0, len(rows), step)]
            rows = [r for i in rng.permutation(len(steps)) for r in steps[i]]
        return rows


def pack(indices: np.ndarray, lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Best-fit decreasing: each example, longest first, goes into the fullest row it still fits in."""
    rows: list[list[int]] = []
    space: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in sorted(indices.tolist(), key=lambda i: -lengths[i]):
        need = int(lengths[i])
        k = bisect_left(space, (need, -1))
        if k == len(space):
            rows.append([i])
            insort(space, (capacity - need, len(rows) - 1))
        else:
            free, row = space.pop(k)
            rows[row].append(i)
            insort(space, (free - need, row))
    return rows
