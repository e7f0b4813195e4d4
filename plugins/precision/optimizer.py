"""``LowPrecisionAdamW``: Adam/AdamW whose moments are stored in bf16 or blockwise 8-bit.

The update is torch's AdamW formula computed in fp32: each step dequantises a parameter's moments,
updates them and the parameter, and stores them back rounded. Parameters smaller than
``min_numel`` (biases, norm scales: little memory, sensitive) keep fp32 moments, as bitsandbytes
does. The state holds only tensors (``exp_avg`` / ``exp_avg_sq`` in bf16, or ``*_codes`` int8/uint8
and ``*_absmax`` fp32), so ``state_dict`` round-trips exactly and checkpoints load with
``weights_only=True``.

Stochastic rounding draws its noise from a generator seeded by ``(seed, step, parameter index)``:
nothing random is kept in the state, a resumed run draws the same noise, and every DDP rank (which
sees the same all-reduced gradients) stores the same moments.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from .blockwise import dequantize_blockwise, quantize_blockwise, round_to_bf16

StateDtype = Literal["bf16", "int8"]
M_POWER, V_POWER = 2.0, 4.0  # companding of the first (signed) and second (unsigned) moments


class LowPrecisionAdamW(torch.optim.Optimizer):
    """AdamW (``decoupled_weight_decay=True``) or Adam with L2 (False), moments in bf16 or 8-bit."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        decoupled_weight_decay: bool = True,
        state_dtype: StateDtype = "int8",
        block_size: int = 256,
        min_numel: int = 4096,
        stochastic_rounding: bool = True,
        seed: int = 0,
    ) -> None:
        if state_dtype not in ("bf16", "int8"):
            raise ValueError(f"state_dtype={state_dtype!r} must be 'bf16' or 'int8'")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas={betas} must be in [0, 1)")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "decoupled_weight_decay": decoupled_weight_decay}
        super().__init__(params, defaults)
        self.state_dtype, self.block_size, self.min_numel = state_dtype, block_size, min_numel
        self.stochastic_rounding, self.seed = stochastic_rounding, seed

    @classmethod
    def replacing(cls, optimizer: torch.optim.Optimizer, **options: Any) -> LowPrecisionAdamW:
        """The same parameter groups (the very dicts, so LR schedulers keep working) and hyper-parameters
        as a ``torch.optim.Adam``/``AdamW``, with its existing moments converted."""
        decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(optimizer.defaults.get("decoupled_weight_decay"))
        for group in optimizer.param_groups:
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("LowPrecisionAdamW does not implement amsgrad or maximize: turn them off")
            group["decoupled_weight_decay"] = decoupled
        new = cls(optimizer.param_groups, decoupled_weight_decay=decoupled, **options)
        for p, state in optimizer.state.items():
            if "exp_avg" in state:
                new.state[p] = {"step": torch.as_tensor(state["step"], dtype=torch.float32).clone()}
                new._store(p, new.state[p], state["exp_avg"].float(), state["exp_avg_sq"].float(), index=0)
        return new

    # -- storage ---------------------------------------------------------------------------------------

    def _format(self, p: Tensor) -> str:
        return self.state_dtype if p.numel() >= self.min_numel else "fp32"

    def _noise(self, p: Tensor, step: int, index: int, kind: str) -> Tensor | None:
        if not self.stochastic_rounding:
            return None
        g = torch.Generator(device=p.device)
        g.manual_seed((self.seed * 1_000_003 + step) * 100_003 + index)
        if kind == "bf16":
            return torch.randint(0, 1 << 16, p.shape, generator=g, device=p.device, dtype=torch.int32)
        blocks = math.ceil(p.numel() / self.block_size)
        return torch.rand((blocks, self.block_size), generator=g, device=p.device)

    def _load(self, p: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if "exp_avg_codes" in state:
            m = dequantize_blockwise(state["exp_avg_codes"], state["exp_avg_absmax"], p.shape, True, M_POWER)
            v = dequantize_blockwise(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"], p.shape, False, V_POWER)
            return m, v
        return state["exp_avg"].float(), state["exp_avg_sq"].float()

    def _store(self, p: Tensor, state: dict[str, Tensor], m: Tensor, v: Tensor, index: int) -> None:
        fmt, step = self._format(p), int(state["step"])
        if fmt == "int8":
            noise_m, noise_v = self._noise(p, step, 2 * index, "int8"), self._noise(p, step, 2 * index + 1, "int8")
            state["exp_avg_codes"], state["exp_avg_absmax"] = quantize_blockwise(m, self.block_size, True, M_POWER, noise_m)
            state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"] = quantize_blockwise(
                v, self.block_size, False, V_POWER, noise_v
            )
        elif fmt == "bf16":
            state["exp_avg"] = round_to_bf16(m, self._noise(p, step, 2 * index, "bf16"))
            state["exp_avg_sq"] = round_to_bf16(v, self._noise(p, step, 2 * index + 1, "bf16"))
        else:
            state["exp_avg"], state["exp_avg_sq"] = m, v

    # -- the update ------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LowPrecisionAdamW does not support sparse gradients")
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    m, v = torch.zeros_like(grad), torch.zeros_like(grad)
                else:
                    m, v = self._load(p, state)
                state["step"] += 1
                t = int(state["step"])
                param = p.float()
                if wd and group["decoupled_weight_decay"]:
                    param.mul_(1 - lr * wd)
                elif wd:
                    grad = grad.add(param, alpha=wd)
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                param.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                p.copy_(param)
                self._store(p, state, m, v, index)
        return loss

    # -- exact state_dict round trip -------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts every floating state tensor to its parameter's dtype on load (bf16 moments,
        # int8 codes -> fp32). The casts are exact (bf16 and 8-bit integers fit fp32), so casting
        # back to the saved dtypes restores the saved bits.
        saved = {
            pid: {k: v.dtype for k, v in state.items() if isinstance(v, Tensor)}
            for pid, state in state_dict["state"].items()
        }
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for pid, dtypes in saved.items():
            state = self.state[params[int(pid)]]
            for key, dtype in dtypes.items():
                state[key] = state[key].to(dtype)

    def state_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for s in self.state.values() for v in s.values() if isinstance(v, Tensor))
