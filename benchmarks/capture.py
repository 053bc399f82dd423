"""Capture overhead and memory, measured in one run on the embedded MiniLM.

Prints
- capture time / plain forward time on the same calibration sentences (target <= 1.5);
- peak-memory growth of capture when the calibration tokens are multiplied by 4
  (target < 10%: statistics are streamed, activations are not kept).

Run: python benchmarks/capture.py [--n 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc

import torch


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_python_and_torch(fn) -> int:
    """Peak bytes allocated during fn: Python heap (tracemalloc) + torch CPU allocations (profiler)."""
    gc.collect()
    tracemalloc.start()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # running total of torch CPU memory over the recorded allocation events
    events = sorted(
        (e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)), key=lambda e: e.time_range.start
    )
    current = peak = 0
    for e in events:
        current += e.cpu_memory_usage
        peak = max(peak, current)
    return py_peak + peak


def main() -> None:
    import qviz

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = qviz.load("minilm")
    texts = qviz.calibration_data(model, n=args.n)
    qviz.capture(model, texts[:16], progress=False)  # warm-up
    model.outputs(texts[:16])

    fwd = _median_time(lambda: model.outputs(texts), args.repeats)
    cap = _median_time(lambda: qviz.capture(model, texts, progress=False), args.repeats)
    ratio = cap / fwd
    print(f"threads: {torch.get_num_threads()}  sentences: {len(texts)}")
    print(f"plain forward           {fwd * 1e3:8.1f} ms")
    print(f"capture (53 layers)     {cap * 1e3:8.1f} ms")
    print(f"capture / forward       {ratio:8.2f}   target <= 1.5   {'PASS' if ratio <= 1.5 else 'MISS'}")

    # memory: same sentences repeated 4x (4x the tokens); batches stay the same size
    small = _peak_python_and_torch(lambda: qviz.capture(model, texts, progress=False))
    large = _peak_python_and_torch(lambda: qviz.capture(model, texts * 4, progress=False))
    growth = (large - small) / small
    print(f"peak memory, 1x tokens  {small / 1e6:8.1f} MB")
    print(f"peak memory, 4x tokens  {large / 1e6:8.1f} MB")
    print(f"growth                  {growth * 100:8.1f} %  target < 10%   {'PASS' if growth < 0.10 else 'MISS'}")


if __name__ == "__main__":
    main()
