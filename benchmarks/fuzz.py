"""Long fuzz runs of mmopt's front doors (the harness is tests/fuzz/fuzz_harness.py).

    python benchmarks/fuzz.py --count 1000 --seed 7            # prints the outcome table
    python benchmarks/fuzz.py --count 300 --seed 1 --json fuzz.json --compile-limit 30

Exits 1 when a call ended in anything but ok or a clean one-line error (see the harness's
docstring for the outcomes), so a run can gate. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import fuzz_harness  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="case generator seed")
    parser.add_argument("--compile-limit", type=int, default=20,
                        help="compiles of models that load (rejected models always go through "
                             "compile: it is fast)")
    parser.add_argument("--subset", type=int, default=5,
                        help="every N-th case also runs quantize and check")
    parser.add_argument("--no-tflite", action="store_true", help="no TFLite cases")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--quiet", action="store_true", help="no per-call progress")
    args = parser.parse_args()

    start = time.perf_counter()
    reason = fuzz_harness.tflite_available()
    if reason and not args.no_tflite:
        print(f"no TFLite cases: {reason}", file=sys.stderr)
    cases = fuzz_harness.generate(args.count, args.seed, tflite=not args.no_tflite)
    print(f"{len(cases)} cases (seed {args.seed}), generated in "
          f"{time.perf_counter() - start:.1f}s", file=sys.stderr)

    def progress(result):
        if not args.quiet:
            print(f"{result.outcome:<15} {result.verb:<9} {result.seconds:6.1f}s {result.case}"
                  + (f"  {result.message[:120]}" if result.message else ""), file=sys.stderr)

    results = fuzz_harness.run(cases, compile_limit=args.compile_limit, subset=args.subset,
                               progress=progress)
    print(f"seed {args.seed}, {time.perf_counter() - start:.0f}s")
    print(fuzz_harness.render(results))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    return 1 if any(r.outcome in fuzz_harness.FINDINGS for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
