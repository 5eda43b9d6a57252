#!/usr/bin/env python3
"""Merge the JSON lines of two peer_shapes runs into one Markdown table.

usage: compare_table.py RESUMABLE_OUTPUT DBOS_OUTPUT

Each file may hold other output too: only lines starting with '{' are read.
Each JSON object has: system, shape, workflows, steps_per_workflow, seconds,
steps_per_s, workflows_per_s, note.
"""
import json
import sys

SHAPE_ORDER = ["sequential", "concurrent", "recovery"]


def load(path: str) -> dict[str, dict]:
    """shape -> result, from the JSON lines of one file (last line wins)."""
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                rows[r["shape"]] = r
    return rows


def size(r: dict) -> str:
    return f"{r['workflows']:,} × {r['steps_per_workflow']:,}"


def cell(shape: str, r: dict | None) -> str:
    if r is None:
        return "—"
    if shape == "recovery":
        return f"{r['workflows_per_s']:,.1f} workflows/s, {r['seconds']:.3f} s"
    return f"{r['steps_per_s']:,.0f} steps/s, {r['seconds']:.3f} s"


def throughput(shape: str, r: dict) -> float:
    # Recovery: compare (and show) workflows/s, which does not depend on whether
    # a side counts all 6 steps or only the 3 that run after the restart.
    return r["workflows_per_s"] if shape == "recovery" else r["steps_per_s"]


def table(ours: dict[str, dict], dbos: dict[str, dict]) -> str:
    shapes = [s for s in SHAPE_ORDER if s in ours or s in dbos]
    shapes += sorted((set(ours) | set(dbos)) - set(SHAPE_ORDER))
    out = ["| shape | workflows × steps | resumable | DBOS | ratio (resumable ÷ DBOS) |",
           "|---|---|---|---|---|"]
    for s in shapes:
        a, b = ours.get(s), dbos.get(s)
        sizes = sorted({size(r) for r in (a, b) if r})
        ratio = "—"
        if a and b and throughput(s, b) > 0:
            ratio = f"{throughput(s, a) / throughput(s, b):.1f}×"
        out.append(f"| {s} | {' vs '.join(sizes)} | {cell(s, a)} | {cell(s, b)} | {ratio} |")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ours, dbos = load(sys.argv[1]), load(sys.argv[2])
    print(table(ours, dbos))
    print("\nRatio: steps/s, except recovery (workflows/s). Notes:")
    for system, rows in (("resumable", ours), ("DBOS", dbos)):
        for shape, r in rows.items():
            if r.get("note"):
                print(f"- {system} {shape}: {r['note']}")


if __name__ == "__main__":
    main()
