"""Parse and export throughput of app.pipeline.formats on records built from ../shared/data.

Usage: python bench/parse_formats.py [N]   (default 300,000 records per case)
Prints one line per case, then one JSON line with all figures (records per second, one core).
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from app.pipeline.formats import EXPORTERS, ParsedRecord, iter_records

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _load(rel: str) -> list[dict[str, Any]]:
    text = (DATA / rel).read_text()
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()]


def _repeat(items: list[dict[str, Any]], n: int) -> list[str]:
    return [json.dumps(items[i % len(items)], ensure_ascii=False) for i in range(n)]


def _parse_rate(data: bytes) -> tuple[float, int]:
    best = 0.0
    count = 0
    for _ in range(3):
        start = time.perf_counter()
        count = sum(1 for rec in iter_records(io.BytesIO(data)) if type(rec) is ParsedRecord)
        best = max(best, count / (time.perf_counter() - start))
    return best, count


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    alpaca = _load("codealpaca/code_alpaca_2k.json") + _load("alpaca-chinese-dataset/zh-data-part-00.json")
    small = [r for r in alpaca if len(json.dumps(r, ensure_ascii=False).encode()) <= 400]
    lines = _repeat(small, n)
    conversations = _repeat(_load("medicalgpt/sharegpt_zh_1K_format.jsonl"), n // 10)
    cases = {
        "alpaca_jsonl": ("\n".join(lines) + "\n").encode(),
        "alpaca_json_array": ("[\n" + ",\n".join(lines) + "\n]\n").encode(),
        "sharegpt_jsonl": ("\n".join(conversations) + "\n").encode(),
    }
    result: dict[str, Any] = {"records": n}
    # The floor no reader can beat: the stdlib decoder alone, on the same lines (also shows how busy the machine is).
    start = time.perf_counter()
    for line in lines:
        json.loads(line)
    result["stdlib_json_loads_per_s"] = round(n / (time.perf_counter() - start))
    print(f"json.loads alone on the alpaca lines: {result['stdlib_json_loads_per_s']:,} records/s")
    for name, data in cases.items():
        rate, count = _parse_rate(data)
        mean = len(data) / count
        print(f"parse {name}: {count:,} records, mean {mean:,.0f} bytes: {rate:,.0f} records/s")
        result[f"parse_{name}_per_s"] = round(rate)
    records = [
        {
            "instruction": r.instruction,
            "input": r.input,
            "output": r.output,
            "messages": r.messages,
            "system": r.system,
        }
        for r in iter_records(cases["alpaca_jsonl"])
        if type(r) is ParsedRecord
    ]
    for name, (writer, _) in EXPORTERS.items():
        start = time.perf_counter()
        writer(records, io.StringIO())
        rate = len(records) / (time.perf_counter() - start)
        print(f"export {name}: {rate:,.0f} records/s")
        result[f"export_{name}_per_s"] = round(rate)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
