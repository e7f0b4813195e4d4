"""CPU time of the MoE layer's expert compute: the grouped reference path (routing metadata + grouped
SwiGLU op, what ``MoELayer`` runs on CPU) vs the previous loop over experts, forward + backward.

    .venv/bin/python benchmarks/moe_grouped_cpu.py [--repeats 30] [--threads 1]

Sizes default to the bench ``lm`` task's upcycled layer: 16 x 64 = 1024 tokens, hidden 128, d_ff 256,
8 experts, top-2, float32. Both paths get the same experts, router logits and upstream gradient; the
two are timed alternately, median of ``--repeats`` runs after warm-up (one ``torch.set_num_threads``
thread by default, as in the bench).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("LIGHTNING_EFF_KERNELS", "torch")  # the CPU production path

import torch  # noqa: E402

from lightning_eff.plugins.moe.layer import loop_topk_experts, routed_topk_experts  # noqa: E402
from lightning_eff.plugins.moe.routing import Routing, router_probs, topk_route  # noqa: E402


def previous_routing(logits: torch.Tensor, top_k: int) -> Routing:
    """The routing before the kernels: torch.topk on the probabilities, no metadata."""
    probs = router_probs(logits)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(experts, weights, torch.ones_like(experts, dtype=torch.bool), probs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--ff", type=int, default=256)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    config = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.ff)
    torch.manual_seed(0)
    experts = torch.nn.ModuleList(transformers.models.llama.modeling_llama.LlamaMLP(config) for _ in range(args.experts))
    router = torch.randn(args.experts, args.hidden) * 0.02
    x0 = torch.randn(args.tokens, args.hidden)
    grad = torch.randn(args.tokens, args.hidden)

    def step(new: bool, with_routing: bool) -> None:
        x = x0.clone().requires_grad_(True)
        logits = x @ router.t()
        routing = topk_route(logits, args.top_k) if new else previous_routing(logits, args.top_k)
        if not with_routing:
            routing = routing._replace(weights=routing.weights.detach())
        out = (routed_topk_experts if new else loop_topk_experts)(x, experts, routing)
        out.backward(grad)

    results = {}
    for with_routing in (False, True):
        times = {False: [], True: []}
        for _ in range(3):
            step(False, with_routing), step(True, with_routing)
        for _ in range(args.repeats):
            for new in (False, True):
                start = time.perf_counter()
                step(new, with_routing)
                times[new].append(time.perf_counter() - start)
        loop, grouped = statistics.median(times[False]) * 1e3, statistics.median(times[True]) * 1e3
        results[with_routing] = (loop, grouped)
        what = "routing + experts" if with_routing else "experts only"
        print(f"{what:18s} fwd+bwd  loop {loop:7.2f} ms  grouped {grouped:7.2f} ms  loop/grouped {loop / grouped:.2f}x")
    print(f"sizes: tokens={args.tokens} hidden={args.hidden} ff={args.ff} experts={args.experts} top_k={args.top_k} "
          f"threads={args.threads} repeats={args.repeats}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
