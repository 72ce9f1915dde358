"""Memory across rule reloads: prints figures, asserts nothing.

    .venv/bin/python bench/bench_reload.py [--reloads 300]

A copy of the repository's rules (without its tests/ folder) in a temporary directory; the main thread
rewrites ruleset.yaml alternating two valid versions (1.0.0 as shipped, and 9.0.0 with another
``reps_high``) and calls ``LiveRuleSet.reload()`` after each write, so every reload checks the files,
compiles a new engine, swaps it in and drops the old one. RSS (VmRSS of /proc/self/status) is read
after 20 warm-up reloads and after the measured ones; goal: growth < 5 MiB for 300 reloads.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds import engine  # noqa: E402
from cds.live_rules import LiveRuleSet  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def variant(text: str) -> str:
    old = next(line for line in text.splitlines() if line.startswith("  reps_high: "))
    return text.replace("version: 1.0.0", "version: 9.0.0", 1).replace(old, "  reps_high: 17", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reloads", type=int, default=300)
    parser.add_argument("--rules", type=Path, default=ROOT / "rules")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "rules"
        shutil.copytree(args.rules, folder, ignore=shutil.ignore_patterns("tests"))
        original = (folder / "ruleset.yaml").read_text()
        texts = [variant(original), original]
        live = LiveRuleSet(folder)

        def reload(n: int) -> None:
            (folder / "ruleset.yaml").write_text(texts[n % 2])
            if not live.reload():
                raise SystemExit(f"reload {n} did not swap: {live.last_error}")

        for n in range(20):  # warm up: imports, caches, allocator arenas
            reload(n)
        gc.collect()
        before = rss_mib()
        t0 = time.perf_counter()
        marks = []
        for n in range(args.reloads):
            reload(n)
            if (n + 1) % (args.reloads // 4 or 1) == 0:
                marks.append(rss_mib())
        elapsed = time.perf_counter() - t0
        gc.collect()
        after = rss_mib()
    print(f"{args.reloads} reloads (alternating two valid rule sets) in {elapsed:.1f} s "
          f"({elapsed / args.reloads * 1e3:.0f} ms each)")
    print(f"RSS before {before:.1f} MiB, after {after:.1f} MiB, growth {after - before:+.1f} MiB "
          f"(goal < 5 MiB); at each quarter: {', '.join(f'{m:.1f}' for m in marks)} MiB")
    print(f"C rulesets alive at the end: {engine.live_rulesets()}")


if __name__ == "__main__":
    main()
