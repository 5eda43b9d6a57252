#!/usr/bin/env python3
"""Checks compare_table.py, which merges the two systems' JSON lines into the
comparison table. Run by CI: `python3 bench/test_compare_table.py`."""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_table  # noqa: E402


def row(system: str, shape: str, steps_per_s: float, workflows_per_s: float) -> str:
    return json.dumps({
        "system": system, "shape": shape, "workflows": 128, "steps_per_workflow": 10,
        "seconds": 1.0, "steps_per_s": steps_per_s, "workflows_per_s": workflows_per_s,
        "note": "",
    })


class CompareTable(unittest.TestCase):
    def write(self, lines: list[str]) -> str:
        f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
        f.write("\n".join(lines) + "\n")
        f.close()
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_only_json_lines_are_read_and_the_ratio_is_ours_over_theirs(self):
        ours = self.write([
            "    Finished `bench` profile [optimized] target(s)",
            row("resumable", "concurrent", 20000, 2000),
            row("resumable", "recovery", 3000, 1500),
        ])
        dbos = self.write([
            row("dbos", "concurrent", 400, 40),
            row("dbos", "recovery", 150, 50),
            row("dbos", "sequential", 300, 0.3),
        ])
        table = compare_table.table(compare_table.load(ours), compare_table.load(dbos))
        lines = table.splitlines()
        concurrent = next(l for l in lines if l.startswith("| concurrent"))
        self.assertIn("50.0×", concurrent)  # steps/s: 20,000 / 400
        recovery = next(l for l in lines if l.startswith("| recovery"))
        self.assertIn("30.0×", recovery)  # workflows/s: 1,500 / 50
        sequential = next(l for l in lines if l.startswith("| sequential"))
        self.assertIn("—", sequential)  # only one side measured it: no ratio
        self.assertLess(lines.index(sequential), lines.index(concurrent))


if __name__ == "__main__":
    unittest.main()
