#!/usr/bin/env python3
"""Table and charts of a bench/peers/run.sh result directory (python3 standard library only).

    bench/peers/report.py bench-results/<stamp>-peers [charts dir]

Result files are <server>-<step>-<pass>.json. Prints the Markdown table (also written to
<results>/table.md): per server, the fan-out
step at TABLE_RATE msg/s (default 200), the many-rooms step and the idle step. Writes
fanout-p50.svg, fanout-p99.svg and fanout-accepted.svg into the charts directory: latency
and accepted messages against the offered load of the fan-out steps, one line per server.
With several passes (REPEAT), every figure is the mean over the passes.
"""
import glob
import json
import math
import os
import sys

ORDER = ["edgechat", "demo", "socketio", "centrifuge"]
LABEL = {
    "edgechat": "edgechat",
    "demo": "seed demo (workerd)",
    "socketio": "socket.io 4",
    "centrifuge": "Centrifuge",
}
COLOR = {"edgechat": "#d62728", "demo": "#ff7f0e", "socketio": "#1f77b4", "centrifuge": "#2ca02c"}


def load(out):
    """{server: {step: [result of each pass]}} from the JSON files (server-step-pass.json)."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        server, rest = os.path.basename(path)[:-5].split("-", 1)
        step = rest.rsplit("-", 1)[0]
        runs.setdefault(server, {}).setdefault(step, []).append(json.load(open(path))["result"])
    return runs


def mean(results, value):
    """The mean of `value` over the passes of a step (None if the step did not run)."""
    if not results:
        return None
    values = [value(x) for x in results]
    return sum(values) / len(values)


def servers(runs):
    return [s for s in ORDER if s in runs] + sorted(s for s in runs if s not in ORDER)


def fmt(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def latency(results):
    p50 = mean(results, lambda x: x["latency"]["p50_ms"])
    p99 = mean(results, lambda x: x["latency"]["p99_ms"])
    return f"{p50:.1f} / {p99:.1f}"


def table(runs, rate):
    head = [
        "server",
        f"fan-out {rate} msg/s: deliveries per server CPU-s",
        "accepted msg/s",
        "refused",
        "p50 / p99 ms",
        "many rooms: accepted msg/s",
        "p50 / p99 ms",
        "deliveries per server CPU-s",
        "bytes per idle connection",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for server in servers(runs):
        fan = runs[server].get(f"fanout-{rate}")
        rooms = runs[server].get("rooms")
        idle = runs[server].get("idle")
        row = [LABEL.get(server, server)]
        if not fan:
            row += ["–"] * 4
        else:
            row += [
                fmt(mean(fan, lambda x: x["cpu"]["deliveries_per_server_cpu_sec"])),
                fmt(mean(fan, lambda x: x["accepted_per_sec"])),
                fmt(mean(fan, lambda x: x["errors"]["error_frames"])),
                latency(fan),
            ]
        if not rooms:
            row += ["–"] * 3
        else:
            row += [
                fmt(mean(rooms, lambda x: x["accepted_per_sec"])),
                latency(rooms),
                fmt(mean(rooms, lambda x: x["cpu"]["deliveries_per_server_cpu_sec"])),
            ]
        if not idle:
            row.append("–")
        else:
            text = f"{mean(idle, lambda x: x['bytes_per_connection_resident']) / 1024:.1f} KiB"
            if server == "edgechat":
                hibernated = mean(idle, lambda x: x["bytes_per_connection_hibernated"])
                text += f" ({hibernated / 1024:.1f} KiB hibernated)"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    passes = max(len(results) for steps in runs.values() for results in steps.values())
    lines.append("")
    lines.append(f"Means over {passes} interleaved pass(es).")
    return "\n".join(lines)


def chart(path, title, ylabel, series, log_y=True):
    """One SVG line chart: series = {server: [(offered msg/s, value)]}, log-scale x."""
    width, height, left, right, top, bottom = 640, 400, 70, 170, 40, 50
    points = [p for values in series.values() for p in values if p[1] is not None and p[1] > 0]
    if not points:
        return
    xs = sorted({p[0] for p in points})
    x_lo, x_hi = math.log2(xs[0]), math.log2(xs[-1])
    if x_hi == x_lo:
        x_hi += 1
    ys = [p[1] for p in points]
    if log_y:
        y_lo = math.floor(math.log10(min(ys)))
        y_hi = math.ceil(math.log10(max(ys)))
        if y_hi == y_lo:
            y_hi += 1
        ticks = [10 ** e for e in range(y_lo, y_hi + 1)]
        ty = lambda v: math.log10(v)
        lo, hi = y_lo, y_hi
    else:
        lo, hi = 0, max(ys) * 1.1
        step = 10 ** math.floor(math.log10(hi / 2))
        ticks = [step * i for i in range(0, int(hi / step) + 1)]
        ty = lambda v: v
    px = lambda x: left + (math.log2(x) - x_lo) / (x_hi - x_lo) * (width - left - right)
    py = lambda y: top + (1 - (ty(y) - lo) / (hi - lo)) * (height - top - bottom)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
    ]
    for tick in ticks:
        y = py(tick) if tick > 0 or not log_y else None
        if y is None or y < top - 1 or y > height - bottom + 1:
            continue
        label = f"{tick:g}"
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for x in xs:
        out.append(f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{height - bottom}" stroke="#eee"/>')
        out.append(f'<text x="{px(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="none" stroke="#888"/>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">offered load, msg/s (1 room × 1,000 clients, 100 senders)</text>')
    out.append(f'<text transform="translate(16,{(top + height - bottom) / 2}) rotate(-90)" text-anchor="middle">{ylabel}</text>')
    for i, (server, values) in enumerate(series.items()):
        values = [(x, y) for x, y in values if y is not None and y > 0]
        color = COLOR.get(server, "#555")
        if values:
            path_d = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(values))
            out.append(f'<path d="{path_d}" fill="none" stroke="{color}" stroke-width="2"/>')
            for x, y in values:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        ly = top + 10 + i * 18
        out.append(f'<line x1="{width - right + 12}" y1="{ly}" x2="{width - right + 32}" y2="{ly}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{width - right + 38}" y="{ly + 4}">{LABEL.get(server, server)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    out = sys.argv[1]
    charts = sys.argv[2] if len(sys.argv) > 2 else out
    rate = os.environ.get("TABLE_RATE", "200")
    runs = load(out)
    text = table(runs, rate)
    print(text)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text + "\n")
    os.makedirs(charts, exist_ok=True)

    def series(value):
        result = {}
        for server in servers(runs):
            steps = [(float(s.split("-", 1)[1]), x) for s, x in runs[server].items() if s.startswith("fanout-")]
            result[server] = [(rate_, mean(x, value)) for rate_, x in sorted(steps, key=lambda t: t[0])]
        return result

    chart(os.path.join(charts, "fanout-p50.svg"), "Fan-out: median latency, send to each delivery",
          "p50 latency, ms (log)", series(lambda x: x["latency"]["p50_ms"]))
    chart(os.path.join(charts, "fanout-p99.svg"), "Fan-out: p99 latency, send to each delivery",
          "p99 latency, ms (log)", series(lambda x: x["latency"]["p99_ms"]))
    chart(os.path.join(charts, "fanout-accepted.svg"), "Fan-out: messages accepted (sender's own echo)",
          "accepted msg/s", series(lambda x: x["accepted_per_sec"]), log_y=False)
    print(f"charts in {charts}")


if __name__ == "__main__":
    main()
