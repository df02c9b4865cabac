"""Summaries (medians), the printed table, and the results/<timestamp>.md/.json files."""
from __future__ import annotations

import dataclasses
import json
import os

from .benches import Bench, Row
from .common import fmt_num, median

STATUS_STYLE = {"PASS": "bold green", "MISS": "bold red", "ERR": "bold red", "SKIP": "yellow", "NOREF": "yellow",
                "ref": "cyan", "info": "dim"}
HEADERS = ["benchmark", "server", "result (median)", "ratio (same run)", "target", "status", "details"]


def summarize(bench: Bench, samples: dict[str, list[dict]]) -> dict:
    """label -> medians of every numeric metric over the successful runs, plus min/max of the value, n, errors."""
    out = {}
    for label, runs in samples.items():
        ok = [r for r in runs if r.get("ok")]
        keys = {k for r in ok for k, v in r.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "rep"}
        m = {k: median([r.get(k) for r in ok]) for k in keys}
        vals = [r[bench.value_key] for r in ok if r.get(bench.value_key) is not None]
        m.update(n=len(ok), runs=len(runs), min=min(vals, default=None), max=max(vals, default=None),
                 errors=[r.get("problem", "?") for r in runs if not r.get("ok")])
        out[label] = m
    return out


def short(bench: Bench, sample: dict) -> str:
    if not sample.get("ok"):
        return "FAILED: " + str(sample.get("problem", "?"))[:200]
    v = sample.get(bench.value_key)
    extra = ""
    if "srv_cpu_per_gib" in sample:
        extra = f"  (server {fmt_num(sample['srv_cpu_per_gib'])} CPU-s/GiB)"
    elif "p99_ms" in sample and bench.value_key != "p99_ms":
        extra = f"  (p99 {fmt_num(sample['p99_ms'])} ms)"
    elif "rps" in sample and bench.value_key == "p99_ms":
        extra = f"  ({fmt_num(sample['rps'])} req/s)"
    return bench.show(v) + extra


def print_table(rows: list[Row], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(markdown_table(rows))
        return
    t = Table(title=title, show_lines=False, header_style="bold")
    for h in HEADERS:
        t.add_column(h, overflow="fold", max_width=70 if h == "details" else None)
    prev = None
    for r in rows:
        if prev is not None and r.bench != prev:
            t.add_section()
        t.add_row(r.bench if r.bench != prev else "", r.server, r.result, r.ratio, r.goal,
                  f"[{STATUS_STYLE.get(r.status, '')}]{r.status}[/]", r.details)
        prev = r.bench
    Console(width=max(190, int(os.environ.get("COLUMNS", "0") or 0))).print(t)


def _md_escape(x: str) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    prev = None
    for r in rows:
        cells = [r.bench if r.bench != prev else "", r.server, r.result, r.ratio, r.goal,
                 f"**{r.status}**" if r.status in ("PASS", "MISS", "ERR") else r.status, r.details]
        out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        prev = r.bench
    return "\n".join(out)


def runs_table(benches: list[Bench], samples: dict, reps: int) -> str:
    hdr = ["benchmark", "server"] + [f"run {i + 1}" for i in range(reps)]
    out = ["| " + " | ".join(hdr) + " |", "|" + "|".join("---" for _ in hdr) + "|"]
    for b in benches:
        for label, runs in samples.get(b.id, {}).items():
            cells = [b.id, label] + [("FAILED" if not r.get("ok") else b.show(r.get(b.value_key))
                                      + (f" ⚠{r['other_cores']:.1f}" if (r.get("other_cores") or 0) >= 0.25 else ""))
                                     for r in runs]
            cells += [""] * (len(hdr) - len(cells))
            out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(out)


def write_results(results_dir: str, stamp: str, info: dict, rows: list[Row], benches: list[Bench], samples: dict,
                  summaries: dict, notes: list[str]) -> tuple[str, str]:
    os.makedirs(results_dir, exist_ok=True)
    md_path = os.path.join(results_dir, f"{stamp}.md")
    json_path = os.path.join(results_dir, f"{stamp}.json")
    lines = [f"# Atoll benchmark {info['time_utc']} UTC", ""]
    lines += [f"- {k}: {v}" for k, v in info.items() if k not in ("time_utc",)]
    lines += ["", markdown_table(rows), ""]
    lines += ["Ratios are against references measured in the same run (round-robin rep → benchmark → server); "
              "results are medians of the successful runs. Only Atoll rows are judged (PASS/MISS).", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {_md_escape(n)}" for n in notes] + [""]
    lines += ["## Every run", "", "⚠N = N cores were busy outside this benchmark (other processes) during that run.", "",
              runs_table(benches, samples, info.get("reps", 1)), ""]
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    with open(json_path, "w") as f:
        json.dump({"info": info, "rows": [dataclasses.asdict(r) for r in rows], "summary": summaries,
                   "samples": samples, "notes": notes}, f, indent=1, default=str)
    return md_path, json_path
