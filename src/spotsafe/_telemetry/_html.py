"""One self-contained HTML page for a run's report (stdlib only, no torch).

``render_html(report)`` turns the report dict (see ``spotsafe report``) into a single page:
summary figures, the loss curve across restarts, checkpoint timings, the work lost to each
interruption and, when prices were given, the spot vs on-demand cost. Nothing is fetched
when the page is viewed: the CSS and the JS are inline, and the charts are SVG drawn by the
inline JS from the report embedded as JSON in ``<script type="application/json"
id="report-data">``. Every text value put into the HTML is escaped; the JS only ever sets
``textContent``. Missing or None values show as "-".
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from ._events import _clean  # the one JSON-safe conversion (non-finite floats become null)
from ._report import thin_points, world_change

__all__ = ["render_html"]


# --------------------------------------------------------------------------------------
# Reading the report defensively: any key may be missing, None, or of an unexpected type.
# --------------------------------------------------------------------------------------

def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _num(x: Any) -> float | None:
    """``x`` as a finite float, or None (bools, strings, NaN and infinities are not numbers)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _list(x: Any) -> list:
    return x if isinstance(x, list) else []


def _esc(x: Any) -> str:
    return html.escape("-" if x is None else str(x), quote=True)


# --------------------------------------------------------------------------------------
# Formatting. Each returns plain text (escaped by the caller through _esc).
# --------------------------------------------------------------------------------------

def _fmt_s(x: Any) -> str:
    """Seconds: "250 µs", "12.5 ms", "1.23 s", "4m05s", "2h07m"."""
    v = _num(x)
    if v is None:
        return "-"
    sign, v = ("-" if v < 0 else ""), abs(v)
    if v == 0:
        return "0 s"
    if v < 1e-3:
        return f"{sign}{v * 1e6:.0f} µs"
    if v < 1:
        ms = v * 1e3
        return f"{sign}{ms:.2f} ms" if ms < 10 else f"{sign}{ms:.1f} ms" if ms < 100 else f"{sign}{ms:.0f} ms"
    if v < 59.995:
        return f"{sign}{v:.2f} s"
    if v < 3599.5:
        m, s = divmod(int(round(v)), 60)
        return f"{sign}{m}m{s:02d}s"
    h, rem = divmod(int(round(v)), 3600)
    return f"{sign}{h}h{rem // 60:02d}m"


def _fmt_n(x: Any) -> str:
    """A count or a mean of counts: "12", "1,234", "5.5"."""
    v = _num(x)
    if v is None:
        return "-"
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:,.1f}"


def _fmt_pct(x: Any) -> str:
    """A fraction 0..1 as a percentage."""
    v = _num(x)
    return "-" if v is None else f"{v * 100:.1f} %"


def _fmt_money(x: Any) -> str:
    v = _num(x)
    return "-" if v is None else f"{v:,.2f}"


def _fmt_h(x: Any) -> str:
    v = _num(x)
    return "-" if v is None else f"{v:,.3f} h"


# --------------------------------------------------------------------------------------
# The embedded data
# --------------------------------------------------------------------------------------

def _json_for_script(report: dict) -> str:
    text = json.dumps(_clean(report), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    # Inside <script> the text must neither close the element ("</") nor open an HTML
    # comment ("<!--", which changes how the parser looks for the end tag).
    return text.replace("<!--", "\\u003c!--").replace("</", "<\\/")


def _loss_points(report: dict) -> list[list]:
    """The loss points the page draws: [step, value, attempt] with a numeric step and value."""
    out = []
    for p in _list(_get(report, "loss", "points")):
        if isinstance(p, (list, tuple)) and len(p) >= 2 and _num(p[0]) is not None and _num(p[1]) is not None:
            out.append(p)
    return out


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------

_CSS = """
:root { --fg: #1d2330; --muted: #5b6474; --line: #d8dce3; --bg-soft: #f5f7fa; --accent: #1f77b4; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0 auto; padding: 24px 28px 48px; max-width: 1040px; color: var(--fg); background: #fff;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 17px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
p.sub { margin: 0 0 16px; color: var(--muted); }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--bg-soft);
       padding: 1px 4px; border-radius: 3px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: var(--bg-soft);
        break-inside: avoid; }
.card .k { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.card .v { font-size: 24px; font-weight: 600; margin: 2px 0; font-variant-numeric: tabular-nums; }
.card .d { font-size: 13px; color: var(--muted); }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 4px 0 8px; }
th, td { padding: 4px 12px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { font-size: 13px; color: var(--muted); font-weight: 600; }
th:first-child, td:first-child, td.t { text-align: left; }
.chart { width: 100%; height: auto; display: block; }
.chart text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: var(--fg); }
.chart .tick line { stroke: #eceef2; }
.chart .axis { stroke: #8a93a3; }
.chart .lbl { fill: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 13px; color: var(--muted); margin: 6px 0 0 60px; }
.legend .sw { display: inline-block; width: 18px; height: 0; border-top: 3px solid; vertical-align: middle;
              margin-right: 6px; }
.legend .sw.dash { border-top: 2px dashed #6b7280; }
.legend .sw.band { height: 12px; border: 0; background: #fdebd3; }
.legend .sw.ring { width: 9px; height: 9px; border: 1.5px solid #6b7280; border-radius: 50%; margin: 0 6px 0 4px; }
.empty { color: var(--muted); font-style: italic; padding: 12px 0; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0; }
.cols { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 28px; align-items: start; }
@media (max-width: 760px) { .cols { grid-template-columns: 1fr; } }
@media print {
  body { padding: 0; max-width: none; font-size: 11pt; }
  h2, .card, table, svg, section { break-inside: avoid; }
  .card { background: none; }
}
"""

# Installed first thing in <head>: JS errors and console.error calls end up in
# document.body.dataset.errors, so a headless browser's DOM dump shows them.
_ERRORS_JS = """
(function () {
  var errs = window.__reportErrors = [];
  function flush() { if (document.body && errs.length) document.body.dataset.errors = errs.join(" | "); }
  function note(msg) { errs.push(String(msg)); flush(); }
  window.onerror = function (msg, src, line, col) { note(msg + " @" + line + ":" + col); return false; };
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  var orig = console.error;
  console.error = function () {
    note(Array.prototype.slice.call(arguments).join(" "));
    return orig.apply(console, arguments);
  };
  document.addEventListener("DOMContentLoaded", flush);
})();
"""

_CHART_JS = r"""
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var report = JSON.parse(document.getElementById("report-data").textContent);

  function el(name, attrs, parent, text) {
    var e = document.createElementNS(SVGNS, name);
    for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function isNum(x) { return typeof x === "number" && isFinite(x); }
  function colour(i) { return PALETTE[i % PALETTE.length]; }

  // "Nice" tick values covering [lo, hi], about n of them.
  function ticks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    var raw = (hi - lo) / n, pow = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10)), err = raw / pow;
    var step = pow * (err >= 7.07 ? 10 : err >= 3.16 ? 5 : err >= 1.41 ? 2 : 1);
    var out = [];
    for (var v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  // ref: the largest magnitude on the axis, so that all its labels use the same unit.
  function fmtNum(v, ref) {
    var a = Math.abs(v), r = Math.max(a, Math.abs(ref || 0));
    if (v === 0) return "0";
    if (r >= 1e6) return +(v / 1e6).toPrecision(4) + "M";
    if (r >= 1e4) return +(v / 1e3).toPrecision(4) + "k";
    if (a !== 0 && a < 1e-3) return v.toExponential(1);
    return String(+v.toPrecision(6));
  }
  function fmtSec(v) {
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a < 1e-3) return +(v * 1e6).toPrecision(3) + " µs";
    if (a < 1) return +(v * 1e3).toPrecision(3) + " ms";
    if (a < 60) return +v.toPrecision(3) + " s";
    if (a < 3600) return Math.floor(v / 60) + "m" + ("0" + Math.round(v % 60)).slice(-2) + "s";
    return Math.floor(v / 3600) + "h" + ("0" + Math.floor((v % 3600) / 60)).slice(-2) + "m";
  }
  function extent(vals) {
    var lo = Infinity, hi = -Infinity;
    vals.forEach(function (v) { if (v < lo) lo = v; if (v > hi) hi = v; });
    return [lo, hi];
  }
  function widen(ext, pad) {
    var lo = ext[0], hi = ext[1];
    if (!(hi > lo)) { var d = Math.abs(lo) * 0.1 || 1; return [lo - d, hi + d]; }
    var p = (hi - lo) * pad; return [lo - p, hi + p];
  }
  function textWidth(t, fallbackChars) {
    try { var w = t.getComputedTextLength(); if (w > 0) return w; } catch (e) { /* not laid out */ }
    return fallbackChars * 6.5;
  }

  // Axes, grid and tick labels for a plot box; returns the scale functions.
  function frame(svg, box, xd, yd, opts) {
    var sx = function (v) { return box.x + (v - xd[0]) / (xd[1] - xd[0]) * box.w; };
    var sy = function (v) { return box.y + box.h - (v - yd[0]) / (yd[1] - yd[0]) * box.h; };
    var g = el("g", {"class": "axes"}, svg);
    var xref = Math.max(Math.abs(xd[0]), Math.abs(xd[1])), yref = Math.max(Math.abs(yd[0]), Math.abs(yd[1]));
    ticks(yd[0], yd[1], opts.yTicks || 5).forEach(function (v) {
      if (v < yd[0] || v > yd[1]) return;
      var t = el("g", {"class": "tick"}, g), y = sy(v);
      el("line", {x1: box.x, x2: box.x + box.w, y1: y, y2: y}, t);
      el("text", {x: box.x - 6, y: y + 4, "text-anchor": "end"}, t, opts.yFmt(v, yref));
    });
    ticks(xd[0], xd[1], opts.xTicks || 8).forEach(function (v) {
      if (v < xd[0] || v > xd[1]) return;
      var t = el("g", {"class": "tick"}, g), x = sx(v);
      el("line", {x1: x, x2: x, y1: box.y, y2: box.y + box.h}, t);
      el("text", {x: x, y: box.y + box.h + 16, "text-anchor": "middle"}, t, opts.xFmt(v, xref));
    });
    el("line", {"class": "axis", x1: box.x, x2: box.x + box.w, y1: box.y + box.h, y2: box.y + box.h}, g);
    el("line", {"class": "axis", x1: box.x, x2: box.x, y1: box.y, y2: box.y + box.h}, g);
    el("text", {"class": "lbl", x: box.x + box.w / 2, y: box.y + box.h + 34, "text-anchor": "middle"}, g, opts.xLabel);
    el("text", {"class": "lbl", x: 14, y: box.y + box.h / 2, "text-anchor": "middle",
                transform: "rotate(-90 14 " + (box.y + box.h / 2) + ")"}, g, opts.yLabel);
    return {x: sx, y: sy};
  }

  // ---------------------------------------------------------------- loss curve
  function drawLoss() {
    var loss = report.loss || {}, svg = document.getElementById("loss-chart");
    var raw = Array.isArray(loss.points) ? loss.points : [];
    var pts = raw.filter(function (p) { return Array.isArray(p) && isNum(p[0]) && isNum(p[1]); });
    var marks = (Array.isArray(report.per_interruption) ? report.per_interruption : [])
      .filter(function (m) { return m && isNum(m.step); });
    if (!svg || !pts.length) {
      var box = document.getElementById("loss-box");
      if (box && !pts.length && !box.querySelector(".empty")) {
        box.textContent = "";
        var p = document.createElement("p"); p.className = "empty"; p.textContent = "no metrics logged";
        box.appendChild(p);
      }
      document.body.dataset.drawn = "0";
      return;
    }
    // One segment per attempt, in the order attempts first appear.
    var order = [], byAttempt = {};
    pts.forEach(function (p) {
      var key = p.length > 2 && p[2] !== null && p[2] !== undefined ? String(p[2]) : "?";
      if (!byAttempt[key]) { byAttempt[key] = []; order.push(key); }
      byAttempt[key].push(p);
    });

    var W = 900, H = 380;
    var xd = widen(extent(pts.map(function (p) { return p[0]; }).concat(marks.map(function (m) { return m.step; }))), 0.01);
    var yd = widen(extent(pts.map(function (p) { return p[1]; })), 0.05);
    var box = {x: 64, y: 44, w: W - 64 - 20, h: H - 44 - 44};
    var s = frame(svg, box, xd, yd, {xFmt: fmtNum, yFmt: fmtNum, xLabel: "step",
                                     yLabel: String(loss.name || "loss"), xTicks: 10, yTicks: 6});

    // The steps trained twice: from the step an attempt resumed at to the step its
    // predecessor had reached.
    var gBand = el("g", {"class": "replayed"}, svg), bands = 0;
    marks.forEach(function (m) {
      if (!isNum(m.resumed_step) || !(m.step > m.resumed_step)) return;
      var x0 = s.x(Math.max(m.resumed_step, xd[0])), x1 = s.x(m.step);
      var r = el("rect", {x: x0, y: box.y, width: Math.max(x1 - x0, 1), height: box.h, fill: "#fdebd3",
                          "fill-opacity": 0.75}, gBand);
      el("title", {}, r, "steps " + m.resumed_step + "–" + m.step + " replayed after the interruption");
      bands++;
    });
    var gSeg = el("g", {"class": "segments", fill: "none", "stroke-width": 1.8,
                        "stroke-linejoin": "round", "stroke-linecap": "round"}, svg);
    order.forEach(function (key, i) {
      var seg = byAttempt[key], c = colour(i);
      var d = seg.map(function (p, j) { return (j ? "L" : "M") + s.x(p[0]).toFixed(1) + " " + s.y(p[1]).toFixed(1); }).join("");
      var path = el("path", {"class": "seg", d: d, stroke: c, "data-attempt": key, "data-points": seg.length}, gSeg);
      el("title", {}, path, "attempt " + key + ": " + seg.length + " points, steps " + seg[0][0] + "–" + seg[seg.length - 1][0]);
      // Where the attempt starts (a resume point after the first): a small open circle.
      el("circle", {cx: s.x(seg[0][0]).toFixed(1), cy: s.y(seg[0][1]).toFixed(1), r: 3, fill: "#fff", stroke: c,
                    "stroke-width": 1.5}, gSeg);
      if (seg.length === 1) el("circle", {cx: s.x(seg[0][0]), cy: s.y(seg[0][1]), r: 2.5, fill: c}, gSeg);
    });

    // Interruption labels are stacked in up to three rows so that close ones do not overlap.
    var gMark = el("g", {"class": "markers"}, svg), ends = [];
    marks.forEach(function (m) {
      var x = s.x(m.step), label = String(m.source === null || m.source === undefined ? "?" : m.source);
      if (isNum(m.world_size) && isNum(m.next_world_size) && m.world_size !== m.next_world_size)
        label += " (" + m.world_size + "→" + m.next_world_size + " ranks)";  // the job went on at another size
      var g = el("g", {"class": "marker", "data-step": m.step}, gMark);
      el("title", {}, g, label + " at step " + m.step + (isNum(m.resumed_step) ? ", resumed at " + m.resumed_step : ""));
      var t = el("text", {x: x, y: 0, "text-anchor": "middle", fill: "#444"}, g, label);
      var w = textWidth(t, label.length) + 8, row = 0;
      var tx = Math.min(Math.max(x, w / 2), W - w / 2);  // keep the label inside the chart
      t.setAttribute("x", tx);
      while (row < ends.length && ends[row] > tx - w / 2) row++;
      if (row > 2) row = 2;
      ends[row] = tx + w / 2;
      var ty = box.y - 8 - row * 14;
      t.setAttribute("y", ty);
      el("line", {x1: x, x2: x, y1: ty + 3, y2: box.y + box.h, stroke: "#555", "stroke-width": 1.2,
                  "stroke-dasharray": "5 4"}, g);
    });

    svg.setAttribute("data-points", String(pts.length));
    svg.setAttribute("data-segments", String(order.length));
    svg.setAttribute("data-markers", String(marks.length));

    var legend = document.getElementById("loss-legend");
    if (legend) {
      order.forEach(function (key, i) {
        var seg = byAttempt[key], item = document.createElement("span"), sw = document.createElement("span");
        sw.className = "sw"; sw.style.borderTopColor = colour(i);
        item.appendChild(sw);
        item.appendChild(document.createTextNode("attempt " + key + " (steps " + seg[0][0] + "–" + seg[seg.length - 1][0] + ")"));
        legend.appendChild(item);
      });
      var extra = [["ring", "an attempt starts"]];
      if (marks.length) extra.push(["dash", "interruption (labelled with its source)"]);
      if (bands) extra.push(["band", "steps replayed after a restart"]);
      extra.forEach(function (x) {
        var item = document.createElement("span"), sw = document.createElement("span");
        sw.className = "sw " + x[0]; item.appendChild(sw);
        item.appendChild(document.createTextNode(x[1]));
        legend.appendChild(item);
      });
    }
    document.body.dataset.drawn = String(pts.length);
  }

  // ---------------------------------------------------------------- checkpoint stalls
  function drawStalls() {
    var svg = document.getElementById("stall-chart");
    if (!svg) return;
    var list = (Array.isArray(report.checkpoint_list) ? report.checkpoint_list : [])
      .filter(function (c) { return c && isNum(c.stall_s); });
    var useTs = list.length > 0 && list.every(function (c) { return isNum(c.ts); });
    var t0 = useTs ? extent(list.map(function (c) { return c.ts; }))[0] : 0;
    var xs = list.map(function (c, i) { return useTs ? c.ts - t0 : i + 1; });
    var W = 520, H = 210, box = {x: 72, y: 12, w: W - 72 - 14, h: H - 12 - 44};
    var xd = widen(extent(xs.length ? xs : [0]), 0.04);
    var ymax = Math.max.apply(null, list.map(function (c) { return c.stall_s; }).concat([0]));
    var yd = [0, ymax > 0 ? ymax * 1.1 : 1];
    var s = frame(svg, box, xd, yd, {xFmt: useTs ? fmtSec : fmtNum, yFmt: fmtSec,
                                     xLabel: useTs ? "time since first checkpoint" : "checkpoint",
                                     yLabel: "stall", xTicks: 6, yTicks: 4});
    var attempts = [], g = el("g", {"class": "stalls"}, svg);
    list.forEach(function (c, i) {
      var key = String(c.attempt), idx = attempts.indexOf(key);
      if (idx < 0) { attempts.push(key); idx = attempts.length - 1; }
      var x = s.x(xs[i]), y = s.y(c.stall_s), col = colour(idx);
      el("line", {x1: x, x2: x, y1: s.y(0), y2: y, stroke: col, "stroke-width": 2}, g);
      var dot = el("circle", {cx: x, cy: y, r: 3.5, fill: col}, g);
      el("title", {}, dot, "step " + c.step + " (" + (c.reason || "?") + ", attempt " + key + "): stall " + fmtSec(c.stall_s));
    });
    svg.setAttribute("data-points", String(list.length));
  }

  drawLoss();
  drawStalls();
})();
"""


def _card(key: str, value: str, detail: str = "") -> str:
    d = f'<div class="d">{_esc(detail)}</div>' if detail else ""
    return f'<div class="card"><div class="k">{_esc(key)}</div><div class="v">{_esc(value)}</div>{d}</div>'


def _mean(text: str) -> str:
    return text if text == "-" else f"{text} mean"


def _summary(r: dict) -> str:
    cards = []
    wall = _fmt_s(r.get("wall_s"))
    cards.append(_card("Attempts", _fmt_n(r.get("attempts")), f"wall time {wall}"))

    total = _fmt_n(_get(r, "interruptions", "total"))
    by = _get(r, "interruptions", "by_source")
    parts = []
    if isinstance(by, dict):
        items = sorted(by.items(), key=lambda kv: (-(_num(kv[1]) or 0), str(kv[0])))
        parts = [f"{src} {_fmt_n(n)}" for src, n in items]
    detail = " · ".join(parts) if parts else "by source: -"
    drills = _num(r.get("drills"))
    if drills:
        detail += f" ({_fmt_n(drills)} injected by --chaos)"
    cards.append(_card("Interruptions", total, detail))
    cards.append(_card("Crashes", _fmt_n(r.get("crashes"))))
    if (_num(r.get("world_size")) or 1) > 1:
        sizes = [_fmt_n(_get(a, "world_size")) for a in _list(r.get("per_attempt")) if isinstance(a, dict)]
        cards.append(_card("World size", _fmt_n(r.get("world_size")), "ranks per attempt: " + ", ".join(sizes)))

    restarts, resumed = _get(r, "resume", "restarts"), _get(r, "resume", "resumed")
    fallbacks = _get(r, "resume", "fallbacks")
    detail = f"{_fmt_n(resumed)} of {_fmt_n(restarts)} restarts resumed"
    if _num(fallbacks):
        detail += f" · {_fmt_n(fallbacks)} fallbacks"
    cards.append(_card("Resume success", _fmt_pct(_get(r, "resume", "rate")), detail))

    cards.append(_card("Goodput", _fmt_pct(r.get("goodput")), f"useful {_fmt_s(r.get('useful_s'))} of {wall}"))
    cards.append(_card("Lost to restarts", _fmt_s(r.get("restart_lost_s")), "process start, imports, restore"))

    st, sec = _get(r, "replayed", "steps"), _get(r, "replayed", "seconds")
    cards.append(_card("Replayed steps", _mean(_fmt_n(_get(st, "mean"))),
                       f"worst {_fmt_n(_get(st, 'worst'))} · total {_fmt_n(_get(st, 'total'))}"))
    cards.append(_card("Replayed time", _mean(_fmt_s(_get(sec, "mean"))),
                       f"worst {_fmt_s(_get(sec, 'worst'))} · total {_fmt_s(_get(sec, 'total'))}"))
    rm = _get(r, "replayed", "metrics")
    if _num(_get(rm, "compared")):
        cards.append(_card("Replayed metrics", f"{_fmt_n(_get(rm, 'identical'))} of {_fmt_n(_get(rm, 'compared'))}",
                           f"identical · replayed {_fmt_n(_get(st, 'total'))} steps, "
                           f"{_fmt_n(_get(rm, 'compared'))} logged metrics compared, "
                           f"{_fmt_n(_get(rm, 'identical'))} identical"))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _table(head: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=t" if i in left else ""}>{_esc(c)}</td>' for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _checkpoints(r: dict) -> str:
    ck = r.get("checkpoints")
    rows = [[label, _fmt_s(_get(ck, key, "median")), _fmt_s(_get(ck, key, "p95"))]
            for label, key in (("stall (training paused)", "stall_s"), ("persist (written locally)", "persist_s"),
                               ("upload (copied to remote)", "upload_s"))]
    table = _table(["", "median", "p95"], rows)
    n = _get(ck, "count")
    count = f'<p class="note">{_esc(_fmt_n(n))} checkpoints saved.</p>' if _num(n) is not None else ""
    has_stalls = any(isinstance(c, dict) and _num(c.get("stall_s")) is not None
                     for c in _list(r.get("checkpoint_list")))
    if has_stalls:
        chart = ('<svg id="stall-chart" class="chart" viewBox="0 0 520 210" role="img" '
                 'aria-label="stall per checkpoint over time"></svg>')
    else:
        chart = '<p class="empty">no checkpoint timings recorded</p>'
    return f'<div class="cols"><div>{table}{count}</div><div>{chart}</div></div>' + _per_rank(r)


def _per_rank(r: dict) -> str:
    """Stall and persist per rank, when more than one rank reported checkpoints."""
    ranks = [x for x in _list(r.get("checkpoints_by_rank")) if isinstance(x, dict)]
    if len(ranks) < 2:
        return ""
    rows = [[_fmt_n(x.get("rank")), _fmt_n(x.get("count")), _fmt_s(_get(x, "stall_s", "median")),
             _fmt_s(_get(x, "stall_s", "p95")), _fmt_s(_get(x, "persist_s", "median")),
             _fmt_s(_get(x, "persist_s", "p95"))] for x in ranks]
    return ('<h3>Per rank</h3>' + _table(["rank", "checkpoints", "stall median", "stall p95", "persist median",
                                          "persist p95"], rows, left=()))


def _lost_work(r: dict) -> str:
    items = [x for x in _list(r.get("per_interruption")) if isinstance(x, dict)]
    if not items:
        return '<p class="empty">no interruptions</p>'
    ranks = (_num(r.get("world_size")) or 1) > 1
    head = ["#", "attempt", "source", "step reached", "resumed at", "replayed steps", "replayed time", "restart time",
            "restored from", *(["ranks"] if ranks else [])]
    rows = []
    for i, x in enumerate(items, 1):
        row = [str(i), _fmt_n(x.get("attempt")), "-" if x.get("source") is None else str(x.get("source")),
               _fmt_n(x.get("step")), _fmt_n(x.get("resumed_step")), _fmt_n(x.get("replayed_steps")),
               _fmt_s(x.get("replayed_s")), _fmt_s(x.get("restart_s")), _restored_from(x)]
        if ranks:
            row.append(world_change(x))
        rows.append(row)
    return _table(head, rows, left=(0, 2, 8))


def _restored_from(x: dict) -> str:
    """Where the next attempt restored from: "step 110 (local)"; "-" when it did not restore."""
    rf = x.get("restored_from")
    if not isinstance(rf, dict):
        return "-"
    tier = rf.get("tier")
    return f"step {_fmt_n(rf.get('step'))}" + (f" ({tier})" if tier is not None else "")


def _cost(r: dict) -> str:
    c = r.get("cost")
    if not isinstance(c, dict):
        return ('<p class="note">No cost comparison: run the report again with <code>--spot-price</code> and '
                '<code>--on-demand-price</code> (prices per hour) to see what the run cost on spot '
                'against on-demand.</p>')
    rows = [
        ["price per hour", _fmt_money(c.get("spot_price")), _fmt_money(c.get("on_demand_price"))],
        ["hours billed", _fmt_h(c.get("wall_h")), _fmt_h(c.get("on_demand_h"))],
        ["cost", _fmt_money(c.get("spot_cost")), _fmt_money(c.get("on_demand_cost"))],
    ]
    table = _table(["", "spot", "on-demand"], rows)
    savings = (f'<p><strong>Savings: {_esc(_fmt_money(c.get("savings")))}</strong> '
               f'({_esc(_fmt_pct(c.get("savings_fraction")))} of the on-demand cost).</p>')
    note = ('<p class="note">Spot hours are the whole wall time, restarts and replayed steps included; '
            'on-demand hours are the wall time less the replayed steps and the restarts (the run without its interruptions).</p>')
    return table + savings + note


MAX_POINTS = 6000


def render_html(report: dict) -> str:
    """The report as one self-contained HTML page (inline CSS and JS, nothing fetched)."""
    r = report if isinstance(report, dict) else {}
    points = _get(r, "loss", "points")
    if isinstance(points, list) and len(points) > MAX_POINTS:  # a page stays light on a million-step run
        r = {**r, "loss": {**r["loss"], "points": thin_points(points, MAX_POINTS)}}
    root = r.get("root")
    title = f"spotsafe report: {root}" if root is not None else "spotsafe report"
    n_points = len(_loss_points(r))
    loss_name = _get(r, "loss", "name") or "loss"
    if n_points:
        loss = (f'<svg id="loss-chart" class="chart" viewBox="0 0 900 380" role="img" '
                f'aria-label="{_esc(loss_name)} by step, one line per attempt"></svg>'
                '<div id="loss-legend" class="legend"></div>'
                '<noscript><p class="empty">the chart needs JavaScript</p></noscript>')
    else:
        loss = '<p class="empty">no metrics logged</p>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<script>{_ERRORS_JS}</script>
<style>{_CSS}</style>
</head>
<body>
<h1>{_esc(title)}</h1>
<p class="sub">A training run that was interrupted and restarted: what the interruptions cost.</p>
<section id="summary">{_summary(r)}</section>
<section id="loss">
<h2>{_esc(str(loss_name)[:1].upper() + str(loss_name)[1:])} across restarts</h2>
<div id="loss-box">{loss}</div>
</section>
<section id="checkpoints">
<h2>Checkpoint timings</h2>
{_checkpoints(r)}
</section>
<section id="lost-work">
<h2>Lost work per interruption</h2>
{_lost_work(r)}
</section>
<section id="cost">
<h2>Cost</h2>
{_cost(r)}
</section>
<script type="application/json" id="report-data">{_json_for_script(r)}</script>
<script>{_CHART_JS}</script>
</body>
</html>
"""
