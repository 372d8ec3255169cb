"""Stamps for `ncn bench startup`: when a job's first step begins, when each step ends, when it exits.

`install(T)` registers torch-level hooks that add (wall, CPU seconds of the process) stamps to `T`
(the first forward: step 1 begins; every optimizer step) and, at exit, prints `T` on stderr as
one `NCN_BENCH_TIMES {json}` line. The bench runs a job as `python -c PROBE`, which installs it
in the job's process; a job that runs in a fork of the pipeline's server (`ncn.trackserver`)
installs it there when its environment has NCN_BENCH_PROBE=child. train.py knows nothing of it.
"""

from __future__ import annotations

import atexit
import json
import sys
import time


def now() -> tuple[float, float]:
    return time.time(), time.process_time()


def install(T: dict) -> None:
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import ncn.optim

    def first(mod, args):
        T["first_forward"] = now()
        handle.remove()

    def step(opt, args, kwargs):
        T.setdefault("first_step_done", now())
        T["last_step_done"] = now()

    handle = register_module_forward_pre_hook(first)
    register_optimizer_step_post_hook(step)  # torch's optimizers (CUDA's fused AdamW)
    adamw_step = ncn.optim.AdamW.step  # the CPU's AdamW has no global hooks: wrap its step

    def ncn_step(self, *args, **kwargs):
        adamw_step(self, *args, **kwargs)
        step(self, args, kwargs)

    ncn.optim.AdamW.step = ncn_step
    atexit.register(lambda: print("NCN_BENCH_TIMES " + json.dumps({**T, "atexit": now()}), file=sys.stderr, flush=True))
