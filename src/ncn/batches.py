"""Training data order: a seeded permutation of windows of the token stream.

The stream (train.bin) is cut into windows of `block_size + 1` tokens that start every
`block_size` tokens: the inputs x = w[:-1] of consecutive windows do not overlap and every
token after the first is a target exactly once per epoch (y = w[1:] shares one token with
the next window's x, as in nanoGPT). Window k covers tokens [k*T, k*T + T + 1).

The order is a permutation of the window indices drawn from a `torch.Generator` seeded by
the run's seed alone, so every variant (and the iso-parameter baseline) of one seed sees the
same data in the same order; a budget beyond one epoch draws the next epoch's permutation
from the same generator. The order is a pure function of (seed, n_windows, position), so a
resumed run needs only the position (the "data cursor"). What the run records is the hash of
the token ids it actually fed (`ncn.train.batch_digest`), not of this intended order.
"""

from __future__ import annotations

import numpy as np
import torch

from ncn.errors import NCNError


def n_windows(n_tokens: int, block_size: int) -> int:
    return max(0, (n_tokens - 1) // block_size)


class WindowOrder:
    """Maps a global window position (0, 1, 2, ... across epochs) to a window index."""

    def __init__(self, seed: int, n_win: int):
        if n_win < 1:
            raise NCNError("the training stream is shorter than one context window; use more data or a smaller block_size")
        self.seed, self.n_win = seed, n_win
        self._gen = torch.Generator().manual_seed(seed)
        self._perms: list[torch.Tensor] = []

    def _perm(self, epoch: int) -> torch.Tensor:
        while len(self._perms) <= epoch:  # draw epochs in order from the one generator
            self._perms.append(torch.randperm(self.n_win, generator=self._gen))
            if len(self._perms) > 2:  # only the current and next epoch are ever needed
                self._perms[-3] = None  # type: ignore[call-overload]
        return self._perms[epoch]

    def _spans(self, start: int, count: int):
        """The window indices of positions start .. start+count-1, one slice per epoch crossed."""
        pos = start
        while pos < start + count:
            epoch, off = divmod(pos, self.n_win)
            take = min(self.n_win - off, start + count - pos)
            yield self._perm(epoch)[off : off + take]
            pos += take

    def indices(self, start: int, count: int) -> torch.Tensor:
        return torch.cat(list(self._spans(start, count)))


def get_windows(tokens: np.ndarray, idx: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, T) int64 for the windows `idx`."""
    T = block_size
    rows = np.stack([np.asarray(tokens[k * T : k * T + T + 1], dtype=np.int64) for k in idx.tolist()])
    w = torch.from_numpy(rows)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def get_controls(labels: np.ndarray, idx: torch.Tensor, block_size: int) -> torch.Tensor:
    """The per-token label bits (B, T) int64 of the inputs of the windows `idx` (ncn.data.labels:
    each token's own story label, so a window spanning two stories gets both)."""
    T = block_size
    rows = np.stack([np.asarray(labels[k * T : k * T + T], dtype=np.int64) for k in idx.tolist()])
    return torch.from_numpy(rows)
