"""glibc's malloc, set for a process that allocates and frees the same large tensors every step.

By default glibc serves a block above its mmap threshold with a fresh `mmap` and returns it with
`munmap` when it is freed; the threshold starts at 128 KiB and rises to the size of the largest
such block freed so far, and the heap's top is given back (trimmed) once it holds twice that
free. A training step allocates and frees the same activations, gradients and logits every time,
so its freed tensors go back to the kernel and their pages are faulted in again at the next step.
Measured on this project's CPU (`bench/README.md`, "The allocator"): a size-l step of the default
profile (batch 8) spent 10–12% of its CPU time in the kernel.

`keep_freed_memory()` fixes the mmap threshold at glibc's largest, 32 MiB (so blocks up to that
size come from the heap from the start), and raises the trim threshold to 1 GiB: freed memory stays
in the process for the next step. Blocks above 32 MiB are still mapped and unmapped each time.
The cost: up to 1 GiB of freed memory is kept until the process exits instead of returned.
Nothing numeric changes. `ncn` calls it first thing, before torch is imported. A user's own
setting (MALLOC_* or GLIBC_TUNABLES in the environment) is left alone, and so is a libc that is
not glibc.

Inference stages (`inference=True`: evaluate, generate, analyze) also turn mmap off for the heap
(M_MMAP_MAX 0), so blocks of 32 MiB and more come from the heap too. An evaluation forward at
eval.batch_size 16 x 128 x vocabulary 4096 makes exactly 32 MiB of logits, which the threshold
above still mapped and unmapped at every forward: a default-profile `ncn evaluate` spent 5.4-6.3
of its 14.7-17.6 s in the kernel, and takes 10.2-11.3 s with mmap off (bench/README.md, "The
allocator"). Training keeps mmap for them: with mmap off the heap cannot reuse a freed block for an
aligned request of the same size until fragmentation settles, and a loop of two large tensors kept
~5x their size beyond what the process held before (a training step holds many large blocks; an
inference forward two or three).
"""

from __future__ import annotations

import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt's parameter numbers (malloc.h)
TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2); a larger value is refused
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "GLIBC_TUNABLES")


def keep_freed_memory(inference: bool = False) -> bool:
    """Set glibc's malloc as above (with `inference`, mmap off too); True if it was set, False where
    it was left alone. It may be called again later: a forked job's inference turns mmap off in its fork."""
    if any(k in os.environ for k in USER_SETTINGS) or not glibc():
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        kept = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        return kept and (not inference or bool(libc.mallopt(M_MMAP_MAX, 0)))
    except (OSError, AttributeError):
        return False


def glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or no such name
        return False
