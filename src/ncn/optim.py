"""AdamW for CPU jobs, without torch.optim's start-up cost.

Constructing any `torch.optim.Optimizer` imports `torch._dynamo` (its `add_param_group` is wrapped by
`torch._disable_dynamo`): 0.9-1.6 s per process on this project's CPU, most of a short training
job's start-up. This class is the update of `torch.optim.AdamW` with its defaults on the CPU
(the single-tensor path: decoupled weight decay, no amsgrad, no maximize), in the same order of
floating-point operations, so parameters match torch's bitwise step for step (tests/test_optim.py),
and its `state_dict()` has torch's layout: checkpoints load into either class. CUDA jobs use
torch's fused AdamW (ncn.train.make_optimizer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

# the keys of a torch.optim.AdamW param group besides params (kept so state dicts interchange)
_TORCH_KEYS = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
               "differentiable": False, "fused": None, "decoupled_weight_decay": True}


class AdamW:
    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        self.defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, **_TORCH_KEYS}
        groups = list(params)
        groups = groups if groups and isinstance(groups[0], dict) else [{"params": groups}]
        self.param_groups = [{**self.defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self._pre_hooks: list[Callable] = []

    def register_step_pre_hook(self, hook: Callable) -> None:
        """hook(optimizer, args, kwargs) before every step, as torch's."""
        self._pre_hooks.append(hook)

    @torch.no_grad()
    def step(self) -> None:
        for hook in self._pre_hooks:
            hook(self, (), {})
        for g in self.param_groups:
            lr, (beta1, beta2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                s = self.state.get(p)
                if s is None:  # torch keeps `step` as a float32 scalar on the CPU
                    s = self.state[p] = {"step": torch.tensor(0.0, dtype=torch.float32),
                                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                s["step"] += 1
                if wd != 0:
                    p.mul_(1 - lr * wd)
                s["exp_avg"].lerp_(p.grad, 1 - beta1)
                s["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                step = s["step"].item()
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                denom = (s["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(s["exp_avg"], denom, value=-(lr / (1 - beta1**step)))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        """torch's layout: parameters by their index over the groups, in order."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"},
                           "params": list(range(start, start + len(g["params"])))})
            start += len(g["params"])
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        """Load a state dict of this class or of torch.optim.AdamW (same groups, same sizes)."""
        params = self._params()
        sizes = [len(g["params"]) for g in sd["param_groups"]]
        if sizes != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"optimizer state has param groups of sizes {sizes}; this model's are "
                             f"{[len(g['params']) for g in self.param_groups]}")
        for g, saved in zip(self.param_groups, sd["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in sd["state"].items():
            p = params[int(i)]
            # as torch: the moments take the parameter's dtype and device, `step` stays as saved
            # (on the CPU: a fused CUDA run keeps it on the GPU)
            self.state[p] = {k: (v.detach().to("cpu", copy=True) if k == "step"
                                 else v.detach().to(device=p.device, dtype=p.dtype, copy=True))
                             for k, v in s.items()}
