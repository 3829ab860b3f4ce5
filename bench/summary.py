#!/usr/bin/env python3
"""Summary table of a benchmark's JSON lines: one row per system, each column
"median [min-max]" over the runs.

  summary.py RUNS.jsonl KEY[:LABEL]... [--ratio SYSTEM/BASELINE:KEY]...

Rows come in the order systems first appear. --ratio prints
median(SYSTEM, KEY) / median(BASELINE, KEY) for each pair given, and the
ratio run by run (the scripts interleave the systems, so the n-th runs were
measured side by side).
"""
import json
import statistics
import sys


def fmt(x):
    if x is None:
        return "-"
    if x == int(x):
        return f"{int(x):,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    path, rest = args[0], args[1:]
    cols, ratios = [], []
    i = 0
    while i < len(rest):
        if rest[i] == "--ratio":
            ratios.append(rest[i + 1])
            i += 2
            continue
        key, _, label = rest[i].partition(":")
        cols.append((key, label or key))
        i += 1
    rows = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows.setdefault(r.get("system", "?"), []).append(r)

    def values(system, key):
        return [r[key] for r in rows.get(system, []) if isinstance(r.get(key), (int, float))]

    def cell(system, key):
        v = values(system, key)
        if not v:
            return "-"
        if len(v) == 1:
            return fmt(v[0])
        return f"{fmt(statistics.median(v))} [{fmt(min(v))}-{fmt(max(v))}]"

    table = [["system", "runs"] + [label for _, label in cols]]
    for system, rs in rows.items():
        table.append([system, str(len(rs))] + [cell(system, k) for k, _ in cols])
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    for n, row in enumerate(table):
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    def ratio(r):
        # a share of a ceiling (below 1) needs the third digit: 0.298 is not 0.30
        return f"{r:.3f}" if r < 1 else f"{r:.2f}"

    for spec in ratios:
        pair, _, key = spec.partition(":")
        a, _, b = pair.partition("/")
        va, vb = values(a, key), values(b, key)
        if va and vb and statistics.median(vb):
            # runs are interleaved, so the n-th run of each was measured side by side
            pairs = [ratio(x / y) for x, y in zip(va, vb) if y]
            print(f"ratio {a}/{b} {key}: {ratio(statistics.median(va) / statistics.median(vb))} of the medians"
                  f" (run by run: {', '.join(pairs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
