"""Would a compiled decoder step pay off for the lean engine on this CPU?

    python -m benchmarks.compile_lean_layer [--threads 2] [--rows 4] [--positions 20]

Times one seed-scale decoder layer step (d=256, 4 heads, FFN 2048, speech and source attention,
beam rows, a key/value cache of `positions`) written as a pure function of its weights, eagerly and
compiled by Inductor (`torch.compile`, dynamic shapes, weights as inputs), after warm-up. The
difference is what compiling the lean engine's float step could save per layer call: the engine's
glue between kernels, not its matmuls.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

D, HEADS, FFN, MEMORY = 256, 4, 2048, 120


def layer_step(x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, memory_k: torch.Tensor,
               memory_v: torch.Tensor, speech_k: torch.Tensor, speech_v: torch.Tensor,
               w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A pre-norm MD decoder layer for one new position per row (the lean engine's arithmetic)."""
    n, d_k = x.size(0), D // HEADS

    def norm(y: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(y, (D,), w[name + ".w"], w[name + ".b"], 1e-12)

    def source(y: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str) -> torch.Tensor:
        q = F.linear(y, w[name + ".q"], w[name + ".qb"]).view(n, HEADS, d_k).transpose(0, 1).unsqueeze(0)
        context = F.scaled_dot_product_attention(q, k, v)[0]
        return F.linear(context.transpose(0, 1).reshape(n, D), w[name + ".o"], w[name + ".ob"])

    qkv = F.linear(norm(x, "n1"), w["qkv"], w["qkvb"]).view(n, 3, HEADS, d_k)
    keys = torch.cat((keys, qkv[:, 1].unsqueeze(2)), dim=2)
    values = torch.cat((values, qkv[:, 2].unsqueeze(2)), dim=2)
    context = F.scaled_dot_product_attention(qkv[:, 0].unsqueeze(2), keys, values)
    x = x + F.linear(context.view(n, D), w["so"], w["sob"])
    x = x + source(norm(x, "n4"), speech_k, speech_v, "speech")
    x = x + source(norm(x, "n2"), memory_k, memory_v, "src")
    hidden = F.relu(F.linear(norm(x, "n3"), w["w1"], w["b1"]))
    return x + F.linear(hidden, w["w2"], w["b2"]), keys, values


def weights() -> dict[str, torch.Tensor]:
    w = {f"{n}.{p}": torch.randn(D) for n in ("n1", "n2", "n3", "n4") for p in ("w", "b")}
    w.update(qkv=torch.randn(3 * D, D) / 16, qkvb=torch.randn(3 * D), so=torch.randn(D, D) / 16, sob=torch.randn(D),
             w1=torch.randn(FFN, D) / 16, b1=torch.randn(FFN), w2=torch.randn(D, FFN) / 45, b2=torch.randn(D))
    for name in ("speech", "src"):
        w.update({f"{name}.q": torch.randn(D, D) / 16, f"{name}.qb": torch.randn(D), f"{name}.o": torch.randn(D, D) / 16,
                  f"{name}.ob": torch.randn(D)})
    return w


def time_per_call(step: Callable[..., tuple[torch.Tensor, ...]], args: tuple[object, ...], calls: int) -> float:
    for _ in range(20):
        step(*args)
    started = time.perf_counter()
    for _ in range(calls):
        step(*args)
    return (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--positions", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    saved = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        w, n, d_k = weights(), args.rows, D // HEADS
        memory = [torch.randn(1, HEADS, MEMORY, d_k) for _ in range(4)]
        inputs = (torch.randn(n, D), torch.randn(n, HEADS, args.positions, d_k),
                  torch.randn(n, HEADS, args.positions, d_k), *memory, w)
        with torch.inference_mode():
            eager = time_per_call(layer_step, inputs, args.calls)
            started = time.perf_counter()
            compiled_step = torch.compile(layer_step, dynamic=True)
            expected, got = layer_step(*inputs)[0], compiled_step(*inputs)[0]
            compile_seconds = time.perf_counter() - started
            compiled = time_per_call(compiled_step, inputs, args.calls)
        print(f"threads {args.threads}, rows {n}, cached positions {args.positions}: eager {eager * 1e6:.1f} µs, "
              f"compiled {compiled * 1e6:.1f} µs per layer step ({compiled / eager:.2f}x; first call compiled in "
              f"{compile_seconds:.1f} s; max difference {(expected - got).abs().max().item():.2e})")
    finally:
        torch.set_num_threads(saved)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
