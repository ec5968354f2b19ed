#!/usr/bin/env python3
"""Draws a netkey-bench JSON report: throughput and latency percentiles per phase, with
the redis-benchmark yardstick beside them. Usage: plot.py REPORT.json OUT.png
(netkey-bench --plot runs this same script)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, out):
    with open(src) as f:
        r = json.load(f)
    rows = [(p["name"], p["ops_per_sec"], p["p50_us"], p["p99_us"], p["p999_us"])
            for p in r["phases"]]
    for x in r.get("redis", []):
        name = "redis %s %s%s" % (x["test"], x["transport"].upper(),
                                  " fsync" if x["durable"] else "")
        rows.append((name, x["ops_per_sec"], x["p50_us"], x["p99_us"], None))
    names = [x[0] for x in rows]
    colors = ["#c0392b" if n.startswith("redis") else "#2c7fb8" for n in names]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 9))
    top.bar(names, [x[1] for x in rows], color=colors)
    top.set_yscale("log")
    top.set_ylabel("operations / s (log)")
    top.set_title("netkey-bench %s (%s build): %d servers x %d cameras, %d clients; %s"
                  % (r["preset"], r["build"], r["servers"], r["cameras_per_server"],
                     r["clients"], r["transport"]), fontsize=9)
    for i, x in enumerate(rows):
        top.annotate("%.0f" % x[1], (i, x[1]), ha="center", va="bottom", fontsize=7)
    width = 0.27
    for k, (label, col) in enumerate([("p50", 2), ("p99", 3), ("p99.9", 4)]):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        ys = [x[col] / 1000.0 if x[col] is not None else 0 for x in rows]
        bottom.bar(xs, ys, width, label=label)
    bottom.set_xticks(range(len(rows)))
    bottom.set_xticklabels(names)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency, ms (log)")
    bottom.legend()
    for ax in (top, bottom):
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
