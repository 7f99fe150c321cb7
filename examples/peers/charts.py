#!/usr/bin/env python3
"""Bar charts of run.py's results: one SVG per table, from its JSON.

    python charts.py RESULTS.json OUT_DIR

Run by run.py with the "charts" virtualenv (matplotlib); run.py --chart-only redraws them
from an existing JSON without running anything. The SVGs are small and reproducible: text
stays text (no embedded fonts), ids come from a fixed salt and there is no date in them, so
the same JSON draws the same bytes.
"""

import json
import math
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
import matplotlib.ticker  # noqa: E402

plt.rcParams.update({
    "svg.fonttype": "none",
    "svg.hashsalt": "kinesis-peers",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
})

OURS, BEFORE, PEER, CEILING = "#1f6fb4", "#9cc3e4", "#8c8c8c", "#e0e0e0"
# Above this ratio of the largest to the smallest bar, the value axis is logarithmic.
LOG_SPREAD = 20


def color(name):
    if "(ours-before" in name:
        return BEFORE
    if "(ours" in name:
        return OURS
    # The emulator's ceiling and the floor program are references, not peers.
    return CEILING if "ceiling" in name or name.startswith("floor") else PEER


def runs(rows, key):
    """Consecutive rows with the same `key(row)`: the harness writes each table's rows
    grouped by case (records and size, aggregated or not)."""
    groups = []
    for row in rows:
        if not groups or key(groups[-1][-1]) != key(row):
            groups.append([])
        groups[-1].append(row)
    return groups


def size_text(size):
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size:,} B"


def value_text(value):
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2g}" if value < 1 else f"{value:.3g}"


def bars(path, title, unit, groups, footnote=""):
    """`groups`: [(subtitle, [(label, value, valid, colour)])], one panel each, bars
    horizontal and labelled with the peer's name, values written at their ends."""
    groups = [(t, [b for b in bs if b[1] is not None]) for t, bs in groups]
    groups = [(t, bs) for t, bs in groups if bs]
    if not groups:
        return None
    values = [b[1] for _, bs in groups for b in bs if b[1] > 0]
    log = bool(values) and max(values) / min(values) > LOG_SPREAD
    heights = [len(bs) + 0.6 for _, bs in groups]
    fig, axes = plt.subplots(len(groups), 1, sharex=True, squeeze=False,
                             figsize=(8.5, 0.9 + 0.4 * sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    for ax, (subtitle, bs) in zip(axes[:, 0], groups):
        ys = range(len(bs))
        for y, (label, value, valid, colour) in zip(ys, bs):
            ax.barh(y, max(value, 1e-9), color=colour, edgecolor="#555555", linewidth=0.5,
                    hatch=None if valid else "///")
            ax.text(value * (1.06 if log else 1) if value > 0 else 0, y,
                    f" {value_text(value)}", va="center", ha="left", fontsize=8)
        ax.set_yticks(list(ys))
        ax.set_yticklabels(["\n".join(textwrap.wrap(b[0] + ("" if b[2] else " — INVALID"), 48))
                            for b in bs], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(subtitle, fontsize=9, loc="left")
        ax.tick_params(axis="y", length=0)
    ax = axes[-1, 0]
    if log:
        ax.set_xscale("log")
        low = 10 ** math.floor(math.log10(min(values)))
        high = 10 ** math.ceil(math.log10(max(values) * 2))
        ax.set_xlim(low, high)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_xlim(0, max(values) * 1.18)
    ax.set_xlabel(unit + (" (log scale)" if log else "") + (f"\n{footnote}" if footnote else ""))
    fig.suptitle(title, x=0.01, ha="left", fontsize=10, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return path


def producer_groups(rows, field):
    out = []
    for group in runs(rows, lambda r: r["size"]):
        n = max(r["records"] for r in group)
        out.append((f"{n:,} records × {size_text(group[0]['size'])}",
                    [(r["peer"] + ("" if r["records"] == n else f" ({r['records']:,} records)"),
                      r.get(field), r["valid"], color(r["peer"])) for r in group]))
    return out


def consumer_groups(rows, field):
    out = []
    for group in runs(rows, lambda r: r["aggregated"]):
        n = group[0]["records"]
        kind = "aggregated" if group[0]["aggregated"] else "not aggregated"
        out.append((f"{n:,} records of 100 B, {kind}",
                    [(r["peer"], r.get(field), r["valid"], color(r["peer"])) for r in group]))
    return out


def codec_groups(rows):
    out = []
    for op in ("aggregate", "deaggregate"):
        bs = []
        for r in (r for r in rows if r["op"] == op):
            bs.append((f"ours, {size_text(r['size'])}", r["ours_mb_per_s"], True, OURS))
            bs.append((f"aws-kinesis-agg, {size_text(r['size'])}", r["aws_kinesis_agg_mb_per_s"],
                       True, PEER))
        out.append((op, bs))
    return out


def draw(results, out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    when = results.get("date", "")
    during = results.get("load_average_1m_during_run") or {}
    start = results.get("machine", {}).get("load_average")
    if "min" in during:
        load = f", load average {during['min']:.0f}–{during['max']:.0f} on 2 cores"
    else:
        load = f", load average {start[0]:.1f} at the start" if start else ""
    note = f"\n{when}{load}"
    builds = [f"{who}: {results[key]['commit'].split()[0]}" for who, key in
              (("ours", "ours"), ("ours-before", "ours_before")) if (results.get(key) or {}).get("commit")]
    foot = "; ".join(builds) + ("; hatched: invalid row (not every record confirmed)" if builds else "")
    drawn = []
    if results.get("producer"):
        rows = results["producer"]
        drawn.append(bars(out_dir / "peers-producer-cpu.svg",
                          "Producer: CPU per record, lower is better" + note,
                          "CPU time (user + system) per record, µs", producer_groups(rows, "cpu_us_per_record"), foot))
        drawn.append(bars(out_dir / "peers-producer-rss.svg",
                          "Producer: peak resident memory, lower is better" + note,
                          "peak RSS, MiB", producer_groups(rows, "peak_rss_mib"), foot))
    if results.get("consumer"):
        rows = results["consumer"]
        drawn.append(bars(out_dir / "peers-consumer-cpu.svg",
                          "Consumer: CPU per record, lower is better" + note,
                          "CPU time (user + system) per record, µs", consumer_groups(rows, "cpu_us_per_record"), foot))
        drawn.append(bars(out_dir / "peers-consumer-rss.svg",
                          "Consumer: peak resident memory, lower is better" + note,
                          "peak RSS, MiB", consumer_groups(rows, "peak_rss_mib"), foot))
    if results.get("ceiling"):
        rows = [r for r in results["ceiling"] if "size" in r]
        drawn.append(bars(out_dir / "peers-ceiling.svg",
                          "The emulator's ceiling: boto3, 8 threads, prebuilt PutRecords" + note,
                          "records per second", [("records of each size", [
                              (f"{size_text(r['size'])}, {r['records_per_call']} per call",
                               r["records_per_s"], True, CEILING) for r in rows])]))
    if results.get("codec"):
        md5 = results.get("md5_mb_per_s")
        drawn.append(bars(out_dir / "peers-codec.svg",
                          "Codec, one core: throughput, higher is better"
                          + (f" (MD5 of the machine: {md5:,.0f} MB/s)" if md5 else ""),
                          "MB/s of user records", codec_groups(results["codec"])))
    return [str(p) for p in drawn if p]


def main():
    results = json.loads(Path(sys.argv[1]).read_text())
    for path in draw(results, sys.argv[2]):
        print(path)


if __name__ == "__main__":
    main()
