"""Capture overhead and memory, measured in one run on the embedded MiniLM.

Prints
- capture time / plain forward time on the same calibration sentences (target <= 1.5);
- peak-memory growth (peak RSS of fresh processes) when the calibration tokens are
  multiplied by 4 (target < 10%: statistics are streamed, activations are not kept).

Run: python benchmarks/capture.py [--n 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


_CHILD = """
import os, threading, time, qviz
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
model = qviz.load("minilm")
texts = qviz.calibration_data(model, n={n})
qviz.capture(model, texts[:16], progress=False)   # libraries, JIT cache and model resident
before = rss()
peak = [before]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
t = threading.Thread(target=sample); t.start()
qviz.capture(model, texts * {repeat}, progress=False)
done.set(); t.join()
print(before, max(peak[0], rss()))
"""


def _peak_rss(n: int, repeat: int) -> tuple[int, int]:
    """(RSS before, peak RSS during) a capture of ``n * repeat`` sentences, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(n=n, repeat=repeat)], capture_output=True, text=True, check=True
    )
    before, peak = out.stdout.strip().splitlines()[-1].split()
    return int(before), int(peak)


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

    # memory: peak RSS of fresh processes; 4x the sentences is 4x the tokens, same batch size
    base1, small = _peak_rss(args.n, 1)
    base4, large = _peak_rss(args.n, 4)
    growth = (large - small) / small
    print(f"peak RSS during capture, 1x tokens  {small / 1e6:8.1f} MB  (+{(small - base1) / 1e6:.1f} MB over the warm process)")
    print(f"peak RSS during capture, 4x tokens  {large / 1e6:8.1f} MB  (+{(large - base4) / 1e6:.1f} MB over the warm process)")
    print(f"growth                  {growth * 100:8.1f} %  target < 10%   {'PASS' if growth < 0.10 else 'MISS'}")


if __name__ == "__main__":
    main()
