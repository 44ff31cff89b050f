#!/usr/bin/env python3
"""torch.mm on the CPU GEMM lab's shapes (docs/cpu-gemm.md): the median GFLOP/s of C = A·B in
fp32, A [m, k] and B [k, n] row-major, on 1 thread and on 2, as PyTorch's CPU backend runs it.

    path/to/python tools/torch_mm.py [--repeats N]

Needs PyPI's `torch`; prints one line per shape and thread count.
"""

import argparse
import statistics
import time

import torch

SIZES = [(64, 1024, 3136), (1024, 1024, 1024)]


def median_gflops(m, n, k, repeats):
    a = torch.rand(m, k) * 2 - 1
    b = torch.rand(k, n) * 2 - 1
    c = torch.empty(m, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=c)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed > 0.2:
                break
        rates.append(2 * m * n * k * calls / elapsed / 1e9)
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for m, n, k in SIZES:
            gflops = median_gflops(m, n, k, args.repeats)
            print(f"torch.mm {m}x{n}x{k} threads={threads}: {gflops:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
