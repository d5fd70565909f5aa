"""What a run leaves in its directory: history.jsonl, results.json, the plots, report.html.

- history.jsonl: the history in our JSON lines (`history.write_jsonl`), which
  `jepsen-like check history.jsonl --model M` reads back.
- results.json: the verdict, the command line and seed that replay the run, the checker's
  result (every part, with its anomalies), the anomalies again as sentences, the stats.
- latency.png: every completed operation at its invoke time, its latency on a log scale,
  coloured by outcome (ok, fail, info) and shaped by function; fault windows shaded.
- throughput.png: completions per second by outcome; fault windows shaded.
- report.html: one self-contained page (the plots embedded as PNG data) with all of it.

Plots use matplotlib's object API on the Agg canvas (no pyplot, no display, no global
state), so a report can be drawn from any thread.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from jepsen_like.history import History, render_value, to_json_value, write_jsonl
from jepsen_like.result import Result
from jepsen_like.runner import RunOutcome
from jepsen_like.stats import NS_PER_MS, NS_PER_S, render_table, stats

OUTCOME_COLOURS = {"ok": "#2ca02c", "fail": "#d62728", "info": "#ff7f0e"}
FAULT_COLOURS = {"kill": "#d62728", "pause": "#1f77b4", "partition": "#7f7f7f"}
FAULT_COLOUR_OTHER = "#9467bd"
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
FIGURE_SIZE_IN = (10.0, 4.0)
DPI = 100
NEMESIS_EVENTS_SHOWN_MAX = 200


def write_store(outcome: RunOutcome) -> dict[str, Any]:
    """Write every file of the run's directory; the results document."""
    directory = outcome.directory
    with (directory / "history.jsonl").open("w", encoding="utf-8") as stream:
        write_jsonl(outcome.history, stream)
    document = results_document(outcome)
    (directory / "results.json").write_text(
        json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8"
    )
    plots = {
        "latency.png": latency_plot(outcome.history),
        "throughput.png": throughput_plot(outcome.history),
    }
    for name, data in plots.items():
        (directory / name).write_bytes(data)
    (directory / "report.html").write_text(render_html(outcome, document, plots), "utf-8")
    return document


# -- results.json ---------------------------------------------------------------------------


def anomalies(result: Result | None) -> list[dict[str, Any]]:
    """The parts of a (composed) result that are not valid: checker, summary, sentences."""
    if result is None:
        return []
    parts = [
        part
        for part in result.details.values()
        if isinstance(part, Mapping) and {"valid", "checker", "summary"} <= set(part)
    ]
    if not parts:
        parts = [result.to_json()]
    return [
        {
            "checker": part["checker"],
            "valid": part["valid"],
            "summary": part["summary"],
            "explanation": list(part.get("explanation", ())),
        }
        for part in parts
        if part["valid"] is not True
    ]


def outcome_counts(history: History) -> dict[str, int]:
    counts = {"operations": len(history.operations), "ok": 0, "fail": 0, "info": 0}
    for operation in history.operations:
        counts[operation.type] += 1
    counts["nemesis_events"] = len(history.nemesis_ops)
    counts["faults"] = sum(1 for op in history.nemesis_ops if op.f.startswith("start-"))
    return counts


def replay_command(outcome: RunOutcome) -> str:
    """The `jepsen-like test` line that makes this run again (same seed, same options)."""
    config = outcome.config
    words = [
        "jepsen-like test",
        f"--workload {config.workload}",
        f"--nemesis {config.nemesis}",
        f"--nodes {config.nodes}",
        f"--concurrency {config.concurrency}",
        f"--time-limit {config.time_limit_s:g}",
        f"--rate {config.rate:g}",
        f"--seed {config.seed}",
    ]
    low, high = config.interval_s()
    words.append(f"--nemesis-interval {low:g},{high:g}")
    if config.workload == "register":
        words.append(f"--keys {config.keys_active} --ops-per-key {config.ops_per_key}")
    return " ".join(words)


def results_document(outcome: RunOutcome) -> dict[str, Any]:
    config = outcome.config
    result = outcome.result
    low, high = config.interval_s()
    return {
        "test": config.test_name,
        "verdict": outcome.verdict,
        "valid": None if result is None else result.valid,
        "exit_status": outcome.exit_status,
        "command": replay_command(outcome),
        "argv": list(config.command_line),
        "seed": config.seed,
        "config": {
            "workload": config.workload,
            "nemesis": config.nemesis,
            "nodes": config.nodes,
            "concurrency": config.concurrency,
            "time_limit_s": config.time_limit_s,
            "rate": config.rate,
            "nemesis_interval_s": [low, high],
            "keys_active": config.keys_active,
            "ops_per_key": config.ops_per_key,
            "check_time_limit_s": config.check_time_limit_s,
        },
        "started_at": outcome.started_at,
        "duration_s": round(outcome.duration_s, 3),
        "namespace": outcome.namespace,
        "crash": outcome.crash,
        "crash_traceback": outcome.crash_traceback,
        "notes": outcome.notes,
        "counts": outcome_counts(outcome.history),
        "check_command": f"jepsen-like check history.jsonl --model {outcome.model}",
        "checker": None if result is None else to_json_value(result.to_json()),
        "anomalies": anomalies(result),
        "stats": stats(outcome.history).to_json(),
    }


# -- plots ----------------------------------------------------------------------------------


def nemesis_windows(history: History) -> Iterator[tuple[str, float, float]]:
    """(fault kind, start s, end s) of each fault: `start-X` to the next `stop-X`, or to the
    final heal, or to the end of the history."""
    end_s = max((op.time_ns or 0 for op in history.ops), default=0) / NS_PER_S
    open_at: dict[str, float] = {}
    for op in history.nemesis_ops:
        seconds = (op.time_ns or 0) / NS_PER_S
        if op.f.startswith("start-"):
            open_at.setdefault(op.f.removeprefix("start-"), seconds)
        elif op.f.startswith("stop-"):
            kind = op.f.removeprefix("stop-")
            if kind in open_at:
                yield kind, open_at.pop(kind), seconds
        elif op.f == "heal":
            for kind, began in open_at.items():
                yield kind, began, seconds
            open_at.clear()
    for kind, began in open_at.items():
        yield kind, began, end_s


def _shade_faults(axes: Axes, history: History) -> None:
    labelled: set[str] = set()
    for kind, start_s, end_s in nemesis_windows(history):
        label = None if kind in labelled else kind
        labelled.add(kind)
        colour = FAULT_COLOURS.get(kind, FAULT_COLOUR_OTHER)
        axes.axvspan(start_s, max(end_s, start_s + 0.05), color=colour, alpha=0.15, label=label)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def latency_plot(history: History) -> bytes:
    figure = Figure(figsize=FIGURE_SIZE_IN)
    axes = figure.add_subplot()
    functions = sorted({operation.f for operation in history.operations})
    marker_of = {f: MARKERS[i % len(MARKERS)] for i, f in enumerate(functions)}
    points: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for operation in history.operations:
        latency = operation.latency_ns
        if latency is None or operation.invoke.time_ns is None:
            continue
        xs, ys = points.setdefault((operation.f, operation.type), ([], []))
        xs.append(operation.invoke.time_ns / NS_PER_S)
        ys.append(max(latency / NS_PER_MS, 1e-3))
    _shade_faults(axes, history)
    for (f, outcome), (xs, ys) in sorted(points.items()):
        axes.scatter(
            xs,
            ys,
            s=8,
            marker=marker_of[f],
            color=OUTCOME_COLOURS.get(outcome, "black"),
            alpha=0.6,
            linewidths=0,
            label=f"{f} {outcome}",
        )
    if points:
        axes.set_yscale("log")
    axes.set_xlabel("time since the start (s)")
    axes.set_ylabel("latency (ms)")
    axes.set_title("Latency of every operation, by outcome")
    axes.grid(True, which="major", alpha=0.3)
    if points or history.nemesis_ops:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _png(figure)


def throughput_plot(history: History) -> bytes:
    figure = Figure(figsize=FIGURE_SIZE_IN)
    axes = figure.add_subplot()
    end_s = max((op.time_ns or 0 for op in history.ops), default=0) / NS_PER_S
    bins = int(end_s) + 1
    per_second = {outcome: [0] * bins for outcome in OUTCOME_COLOURS}
    for operation in history.operations:
        completion = operation.completion
        if completion is None or completion.time_ns is None:
            continue
        per_second[operation.type][min(completion.time_ns // NS_PER_S, bins - 1)] += 1
    _shade_faults(axes, history)
    seconds = list(range(bins))
    for outcome, counts in per_second.items():
        if any(counts):
            axes.step(seconds, counts, where="post", color=OUTCOME_COLOURS[outcome], label=outcome)
    axes.set_xlabel("time since the start (s)")
    axes.set_ylabel("completions per second")
    axes.set_title("Throughput, by outcome")
    axes.grid(True, alpha=0.3)
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _png(figure)


# -- report.html ----------------------------------------------------------------------------

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 72em; color: #222; }
h1 .valid { color: #2ca02c; } h1 .invalid, h1 .crashed { color: #d62728; }
h1 .unknown { color: #ff7f0e; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left;
         font-family: monospace; font-size: 90%; vertical-align: top; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
.anomaly { border-left: 4px solid #d62728; padding-left: 1em; margin-bottom: 1em; }
img { max-width: 100%; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _rows(pairs: Sequence[tuple[str, object]]) -> str:
    return "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in pairs)


def render_html(
    outcome: RunOutcome, document: Mapping[str, Any], plots: Mapping[str, bytes]
) -> str:
    verdict = document["verdict"]
    config = outcome.config
    counts = document["counts"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_e(config.test_name)}: {_e(verdict)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(config.test_name)}: <span class='{_e(verdict)}'>{_e(verdict)}</span></h1>",
        "<table>",
        _rows(
            [
                ("replay", document["command"]),
                ("seed", config.seed),
                ("started", outcome.started_at),
                ("duration", f"{outcome.duration_s:.1f} s"),
                ("namespace", outcome.namespace or "none (127.0.0.1)"),
                (
                    "operations",
                    f"{counts['operations']} (ok {counts['ok']}, fail {counts['fail']}, "
                    f"info {counts['info']})",
                ),
                ("faults", counts["faults"]),
                ("re-check", document["check_command"]),
                ("exit status", document["exit_status"]),
            ]
        ),
        "</table>",
    ]
    if outcome.crash is not None:
        parts.append(f"<h2>The run crashed</h2><pre>{_e(outcome.crash)}</pre>")
        if outcome.crash_traceback:
            parts.append(f"<pre>{_e(outcome.crash_traceback)}</pre>")
    if outcome.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{_e(note)}</li>" for note in outcome.notes)
        parts.append("</ul>")
    parts.append(_checker_section(outcome.result, document))
    for name, title in (("latency.png", "Latency"), ("throughput.png", "Throughput")):
        data = base64.b64encode(plots[name]).decode("ascii")
        parts.append(f"<h2>{title}</h2><img alt='{name}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Latency and throughput</h2><pre>")
    parts.extend(_e(line) + "\n" for line in render_table(stats(outcome.history)))
    parts.append("</pre>")
    parts.append(_nemesis_section(outcome.history))
    parts.append(
        "<h2>Files</h2><ul><li><a href='history.jsonl'>history.jsonl</a></li>"
        "<li><a href='results.json'>results.json</a></li>"
        "<li><a href='latency.png'>latency.png</a></li>"
        "<li><a href='throughput.png'>throughput.png</a></li>"
        "<li><a href='cluster/'>cluster/</a> (node configs and logs)</li></ul>"
    )
    parts.append("</body></html>\n")
    return "".join(parts)


def _checker_section(result: Result | None, document: Mapping[str, Any]) -> str:
    if result is None:
        return "<h2>Checker</h2><p>No client operation was recorded: nothing to check.</p>"
    parts = ["<h2>Checker</h2><table>"]
    details = result.details.values()
    checked = [p for p in details if isinstance(p, Mapping) and "checker" in p] or [
        result.to_json()
    ]
    parts.append(
        _rows([(str(p["checker"]), f"{render_value(p['valid'])}: {p['summary']}") for p in checked])
    )
    parts.append("</table>")
    found = document["anomalies"]
    if not found:
        parts.append("<p>No anomaly found.</p>")
        return "".join(parts)
    parts.append("<h2>Anomalies</h2>")
    for anomaly in found:
        lines = anomaly["explanation"] or [anomaly["summary"]]
        parts.append(
            f"<div class='anomaly'><h3>{_e(anomaly['checker'])}: {_e(anomaly['summary'])}</h3>"
            f"<pre>{_e(chr(10).join(lines))}</pre></div>"
        )
    return "".join(parts)


def _nemesis_section(history: History) -> str:
    events = history.nemesis_ops
    if not events:
        return "<h2>Faults</h2><p>None.</p>"
    rows = [
        f"<tr><td>{(op.time_ns or 0) / NS_PER_S:.3f}</td><td>{_e(op.f)}</td>"
        f"<td>{_e(json.dumps(to_json_value(op.value), default=str))}</td></tr>"
        for op in events[:NEMESIS_EVENTS_SHOWN_MAX]
    ]
    more = len(events) - NEMESIS_EVENTS_SHOWN_MAX
    tail = f"<p>and {more} more in history.jsonl</p>" if more > 0 else ""
    return (
        "<h2>Faults</h2><table><tr><th>time (s)</th><th>f</th><th>value</th></tr>"
        + "".join(rows)
        + "</table>"
        + tail
    )
