"""Widget latency and payload, measured in one run.

1. Python-side time from a control change to the figure models updated, in
   QuantExplorer: MiniLM's 384×1536 layer (``encoder.layer.0.output.dense``,
   real weights) and a 4096×4096 Linear (random normal weights, std 0.02).
   Timed with the debounce off and the background work off, from setting the
   control's value to the return of the update (re-quantize the layer, one-pass
   error + histogram, three plot-pane figure updates). Targets: ≤ 100 ms and ≤ 300 ms.
   The background work that follows (output error on calibration tokens, the
   2–8 bit sweep, the other layers) is timed separately.
2. Bytes sent to the browser for a heatmap update (OutlierExplorer on MiniLM,
   switching the heatmap statistic), against the raw float32 bytes of the matrix.
   Target: ≤ 1.1×.

Run:  .venv/bin/python benchmarks/widgets.py [--repeats 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def _timed_set(ex: Any, key: str, value: Any) -> float:
    ctrl = ex.controls[key]
    t0 = time.perf_counter()
    ctrl.value = value
    dt = time.perf_counter() - t0
    if ex.last_error:
        raise RuntimeError(f"{key}={value!r}: {ex.last_error}")
    return dt


def bench_layer(model: Any, calib: Any, layer: str, repeats: int) -> dict[str, Any]:
    """Control-change latencies on one layer: configs seen for the first time, and revisited ones."""
    from qviz.widgets import QuantExplorer

    ex = QuantExplorer(model, calib, layer=layer, debounce=0, background=False, group_size=128)
    shape = ex.lab.shape(layer)
    res: dict[str, dict[str, float]] = {}
    # first visit: every change makes a config this layer has not seen (codes + storage are computed)
    first = [("bits", 3), ("bits", 5), ("bits", 6), ("group_size", "64"), ("group_size", "32"),
             ("symmetric", True), ("bits", 8), ("group_size", "channel")][:max(4, repeats)]
    times = [_timed_set(ex, k, v) for k, v in first]
    res["RTN, new config"] = {"median_ms": _median_ms(times), "min_ms": 1e3 * min(times), "n": len(times)}
    # revisit: bits 3 <-> 4 at g128 asym, both seen before (the storage is cached, one fused pass)
    ex.set(bits=4, group_size="128", symmetric=False)
    _timed_set(ex, "bits", 3)
    times = [_timed_set(ex, "bits", 4 if i % 2 == 0 else 3) for i in range(repeats)]
    res["RTN, bits 3<->4 revisited"] = {"median_ms": _median_ms(times), "min_ms": 1e3 * min(times), "n": len(times)}
    ex.set(method="NF4", group_size="64")
    times = [_timed_set(ex, "group_size", g) for g in ("128", "256", "32")]
    res["NF4, new block size"] = {"median_ms": _median_ms(times), "min_ms": 1e3 * min(times), "n": len(times)}
    times = [_timed_set(ex, "group_size", "64" if i % 2 == 0 else "128") for i in range(max(3, repeats // 2))]
    res["NF4, block 64<->128 revisited"] = {"median_ms": _median_ms(times), "min_ms": 1e3 * min(times),
                                            "n": len(times)}
    # the background part, once, on a fresh explorer (output error, 2–8 bit sweep, references, other layers)
    ex2 = QuantExplorer(model, calib, layer=layer, debounce=0, background=True, group_size=128)
    ex2.flush()
    return {"layer": layer, "shape": list(shape), "controls": res,
            "background_s": ex2.timings.get("background", float("nan")),
            "background_layers": len(ex2.lab.names)}


def bench_heatmap_bytes(model: Any, calib: Any) -> dict[str, Any]:
    import json as _json

    from qviz.widgets import OutlierExplorer

    ex = OutlierExplorer(model, calib, debounce=0)
    sent: list[tuple[int, int]] = []
    original = ex.heatmap.comm.send

    def send(data=None, metadata=None, buffers=None, **kw):
        sent.append((len(_json.dumps(data, default=str).encode()), sum(memoryview(b).nbytes for b in buffers or [])))
        return original(data=data, metadata=metadata, buffers=buffers, **kw)

    ex.heatmap.comm.send = send
    rows = []
    for var in ("std", "kurtosis", "absmax"):
        sent.clear()
        t0 = time.perf_counter()
        ex.var_select.value = var
        dt = time.perf_counter() - t0
        raw = ex.heatmap.matrix().nbytes
        total = sum(j + b for j, b in sent)
        rows.append({"statistic": var, "matrix": list(ex.heatmap.shape), "raw_bytes": raw,
                     "json_bytes": sum(j for j, _ in sent), "buffer_bytes": sum(b for _, b in sent),
                     "sent_bytes": total, "ratio": total / raw, "update_ms": 1e3 * dt})
    ex.heatmap.comm.send = original
    return {"n_channels_total": ex.heatmap.n_cols_total, "updates": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--skip-4096", action="store_true", help="leave out the 4096×4096 layer")
    args = parser.parse_args(argv)

    import torch
    from torch import nn

    import qviz

    load = os.getloadavg()
    print(f"qviz widgets benchmark · {os.cpu_count()} CPUs · load average {load[0]:.1f} · "
          f"torch threads {torch.get_num_threads()}", flush=True)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_start": load}

    minilm = qviz.load("minilm")
    calib = qviz.calibration_data(minilm, n=32)
    results["minilm"] = bench_layer(minilm, calib, "encoder.layer.0.output.dense", args.repeats)

    if not args.skip_4096:
        torch.manual_seed(0)
        big = nn.Sequential(nn.Linear(4096, 4096))
        with torch.no_grad():
            big[0].weight.normal_(0.0, 0.02)
        x = torch.randn(128, 4096)
        results["linear4096"] = bench_layer(big, x, "0", args.repeats)

    results["heatmap"] = bench_heatmap_bytes(minilm, calib)
    results["loadavg_end"] = os.getloadavg()

    targets = {"minilm": 100.0, "linear4096": 300.0}
    print("\ncontrol change -> figure models updated (Python side, ms: median, min)")
    for key, target in targets.items():
        if key not in results:
            continue
        r = results[key]
        print(f"  {key}: layer {r['layer']} {r['shape'][0]}x{r['shape'][1]} (target <= {target:.0f} ms)")
        for name, t in r["controls"].items():
            flag = "ok" if t["median_ms"] <= target else "OVER"
            print(f"    {name:<30} {t['median_ms']:8.1f}  {t['min_ms']:8.1f}  (n={t['n']})  {flag}")
        print(f"    background (output error, 2-8 bit sweep, refs, {r['background_layers']} layers): "
              f"{r['background_s']:.2f} s")
    print("\nheatmap update bytes (OutlierExplorer, MiniLM, switching the statistic; target <= 1.1x raw)")
    for row in results["heatmap"]["updates"]:
        print(f"  {row['statistic']:<9} matrix {row['matrix'][0]}x{row['matrix'][1]} raw {row['raw_bytes']} B, "
              f"sent {row['sent_bytes']} B (buffer {row['buffer_bytes']} + JSON {row['json_bytes']}) "
              f"= {row['ratio']:.4f}x, {row['update_ms']:.0f} ms")
    print(f"\nload average at the end: {results['loadavg_end'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
