"""`python -m bench.summary`: the committed results (bench/results/*.json) as one Markdown table."""

from __future__ import annotations

import json

from bench.common import RESULTS, _fmt

ORDER = ["fanout", "publish", "ingest", "read", "connections", "seam"]


def main() -> None:
    print("| # | measure | figure | baseline | ratio | unit | target | met |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for index, name in enumerate(ORDER, 1):
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for row in data["results"]:
            met = "" if row["met"] is None else ("yes" if row["met"] else "**no**")
            base = "" if row["baseline"] is None or row["baseline"] != row["baseline"] else _fmt(row["baseline"])
            ratio = "" if row["ratio"] is None or row["ratio"] != row["ratio"] else f"{row['ratio']:.2f}"
            figure = _fmt(row["figure"]) if row["figure"] is not None else "n/a"
            print(
                f"| {index} | {row['name']} | {figure} | {base} | {ratio} | {row['unit']} | {row['target']} | {met} |"
            )
        load = f"load {data['load_before']:.1f} -> {data['load_after']:.1f}"
        print(f"| {index} | _{name}: {data['when']}, {load}_ | | | | | | |")


if __name__ == "__main__":
    main()
