"""Progress bars for terminals, summary lines for log files.

`bar(...)` returns a tqdm bar when its output (stderr) is a terminal. Otherwise (Snakemake
redirects every job's stderr to a log file) a tqdm would fill the log with carriage-return
redraws, so it returns a `LogBar` with the same interface (iteration, `with`, update,
set_postfix, close, n, total) that prints one plain line every `every` units and one at the
end:

    train causal-xs-s0: 40/200 step (20%), 3.1 s, loss=4.5012, tok_s=1203

`every` defaults to a tenth of the total; without a total, a line every `interval_s` seconds.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Iterable, TextIO


def is_terminal(file: TextIO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def bar(iterable: Iterable | None = None, total: float | None = None, desc: str = "", *, every: float | None = None,
        interval_s: float = 60.0, file: TextIO | None = None, **tqdm_kw: Any):
    """A tqdm on a terminal, else a LogBar. tqdm_kw (unit, unit_scale, initial, leave, ...) go to tqdm;
    the LogBar uses unit, unit_scale and initial."""
    file = sys.stderr if file is None else file
    if is_terminal(file):
        from tqdm import tqdm

        tqdm_kw.setdefault("dynamic_ncols", True)
        return tqdm(iterable, total=total, desc=desc, file=file, **tqdm_kw)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return LogBar(iterable, total, desc, every=every, interval_s=interval_s, file=file,
                  unit=tqdm_kw.get("unit", "it"), unit_scale=bool(tqdm_kw.get("unit_scale")),
                  initial=tqdm_kw.get("initial", 0))


class LogBar:
    """tqdm's interface for log files: one line per `every` units of progress (or per `interval_s`
    seconds when the total is unknown), and one at close."""

    def __init__(self, iterable=None, total=None, desc="", every=None, interval_s=60.0, file=None,
                 unit="it", unit_scale=False, initial=0):
        self.iterable, self.total, self.desc = iterable, total, desc
        self.file = sys.stderr if file is None else file
        self.unit, self.unit_scale = unit, unit_scale
        self.n = self._last_n = initial
        if every is None and total:
            every = max(1, math.ceil((total - initial) / 10))
        if every is not None and every <= 0:
            raise ValueError(f"LogBar: every must be positive, got {every}")
        self.every, self.interval_s = every, interval_s
        self.postfix: dict[str, Any] = {}
        self.t0 = self._t_last = time.monotonic()
        self.closed = self._pending = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self):
        return len(self.iterable) if self.iterable is not None else int(self.total or 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: float = 1) -> None:
        """Add n. A due line waits for the set_postfix that usually follows (so it shows this step's
        values), else it is printed by the next update or close, with this n."""
        self._flush()
        before, self.n = self.n, self.n + n
        if self.every is not None:
            due = self.n // self.every > before // self.every
        else:
            due = time.monotonic() - self._t_last >= self.interval_s
        self._pending = due and not (self.total is not None and self.n >= self.total)  # close() prints the end

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kw) -> None:
        self.postfix = {**(ordered_dict or {}), **kw}
        self._flush()

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self._last_n or self.n == 0:
            self._print()

    def _fmt(self, x: float) -> str:
        if self.unit_scale:
            from tqdm import tqdm

            return tqdm.format_sizeof(x)
        return f"{x:g}" if isinstance(x, float) else str(x)

    def line(self) -> str:
        """The summary line as printed: desc: n/total unit (pct%), elapsed[, postfix]."""
        done = self._fmt(self.n) + (f"/{self._fmt(self.total)}" if self.total is not None else "")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts = [f"{done} {self.unit}{pct}", f"{time.monotonic() - self.t0:.1f} s"]
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return f"{self.desc}: " * bool(self.desc) + ", ".join(parts)

    def _flush(self) -> None:
        if self._pending:
            self._print()

    def _print(self) -> None:
        self._pending, self._last_n, self._t_last = False, self.n, time.monotonic()
        print(self.line(), file=self.file, flush=True)
