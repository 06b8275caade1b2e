"""`charrnn report`: one self-contained HTML page about a training run.

Reads a run directory as `train` leaves it: metrics.jsonl (one line per validation, and the
diagnostics lines between them), samples.jsonl (a sample per validation, fixed seed and temperature) and the last/best
checkpoint (config, training flags, final metrics). Draws the learning curves with
charrnn.svg; nothing is fetched when the page opens.
"""
from __future__ import annotations

import json
import math
import os
from html import escape
from pathlib import Path

import numpy as np

from charrnn.htmlpage import page, table
from charrnn.svg import Mark, Series, histogram, line_chart
from charrnn.errors import ReportError


def find_run_dir(arg: str | None, root: str = "checkpoints") -> Path:
    """RUN_DIR as given, the directory of a checkpoint file, or the newest run under ./checkpoints."""
    if arg is None:
        from charrnn.checkpoint import find_latest
        found = find_latest(root) or find_latest(root, "last")
        if found is None:
            raise ReportError(f"no run directory given and none found under ./{root}")
        return found.parent
    p = Path(arg)
    if p.is_file():
        p = p.parent
    if not p.is_dir():
        raise ReportError(f"no such run directory: {arg}")
    if not (p / "metrics.jsonl").is_file():
        raise ReportError(f"{arg} holds no metrics.jsonl: not a charrnn run directory")
    return p


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The JSON objects of a .jsonl file and how many lines were unreadable (a torn last line
    after a crash is normal and must not stop the report)."""
    if not path.is_file():
        return [], 0
    rows, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
    return rows, bad


def history(rows: list[dict]) -> list[dict]:
    """The records of the run as it finally went: a record whose step is not past the previous
    one means training went back (a rollback, or a resume from an older checkpoint), so the
    records it supersedes are dropped."""
    out: list[dict] = []
    for r in rows:
        step = r.get("step")
        if not isinstance(step, int):
            continue
        while out and out[-1]["step"] >= step:
            out.pop()
        out.append(r)
    return out


def _event_text(e: dict) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("event", "step"))
    return f"step {e.get('step')}: {e.get('event')}" + (f" ({extra})" if extra else "")


def _load_checkpoint(run: Path):
    from charrnn.checkpoint import CheckpointError, load
    for name in ("last", "best"):
        path = run / f"{name}.safetensors"
        if path.is_file():
            try:
                return load(path), path.name
            except CheckpointError:
                continue
    return None, None


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _spread(vals: list[float | None]) -> bool:
    """Wide enough (over 20x) that a log axis reads better."""
    pos = [v for v in vals if v is not None and v > 0]
    return len(pos) > 1 and max(pos) / min(pos) > 20


def curves(evals: list[dict]) -> str:
    """The three learning-curve charts against characters seen."""
    xs = [float(r.get("chars", 0)) for r in evals]
    mk = len(evals) <= 150                       # markers only while they stay readable
    train = [_num(r.get("train_bpc")) for r in evals]
    val = [_num(r.get("val_bpc")) for r in evals]
    lr = [_num(r.get("lr")) for r in evals]
    gn = [_num(r.get("grad_norm")) for r in evals]
    bpc = [Series("train (EMA)", xs, train, markers=mk), Series("validation", xs, val, markers=mk)]
    avg = [_num(r.get("val_bpc_average")) for r in evals]
    if any(v is not None for v in avg):          # a run with --average ema scores both weights
        bpc.append(Series("validation, averaged weights", xs, avg, markers=mk))
    charts = [
        line_chart(bpc, "Bits per character", "characters seen", "bits/char"),
        line_chart([Series("learning rate", xs, lr, markers=mk)], "Learning rate", "characters seen", "lr",
                   logy=_spread(lr)),
        line_chart([Series("gradient norm", xs, gn, markers=mk)], "Gradient norm (last step before each validation)",
                   "characters seen", "L2 norm before clipping", logy=_spread(gn)),
    ]
    return '<div class="charts">' + "".join(charts) + "</div>"


RATIO_GUIDE = -3.0     # Deeplearning4j's rule of thumb for log10(update / parameter)


def _by_name(recs: list[dict], key: str, xs: list[float], mk: bool, logy: bool = False) -> list[Series]:
    """One series per tensor name found under diag[key] of the records."""
    names: list[str] = []
    for r in recs:
        for n in (r["diag"].get(key) or {}):
            if n not in names:
                names.append(n)
    out = []
    for n in names:
        ys = [_num((r["diag"].get(key) or {}).get(n)) for r in recs]
        out.append(Series(n, xs, [y if y is None or not logy or y > 0 else None for y in ys], markers=mk))
    return out


def diagnostics_html(rows: list[dict]) -> str:
    """Charts of the diagnostics records (validations and --diag-every lines) and the weight
    histograms of the latest validation; '' when the run logged none."""
    recs = history([r for r in rows if isinstance(r.get("diag"), dict) and "event" not in r])
    if not recs:
        return ""
    xs = [float(r["step"]) for r in recs]
    mk = len(recs) <= 150
    charts = [
        line_chart(_by_name(recs, "update_ratio", xs, mk), "Update : parameter ratio (log10)", "step",
                   "log10 ||dw|| / ||w||", marks=[Mark(f"{RATIO_GUIDE:g}", RATIO_GUIDE, axis="y")]),
        line_chart(_by_name(recs, "param_norm", xs, mk, True), "Parameter norm per tensor", "step", "L2 norm",
                   logy=True),
        line_chart(_by_name(recs, "grad_norm", xs, mk, True), "Gradient norm per tensor (before clipping)",
                   "step", "L2 norm", logy=True),
    ]
    layered = [r for r in recs if isinstance(r["diag"].get("layers"), list)]
    if layered:
        lx = [float(r["step"]) for r in layered]
        n_layers = max(len(r["diag"]["layers"]) for r in layered)

        def per_layer(key):
            return [Series(f"layer {l}", lx, [_num(r["diag"]["layers"][l].get(key)) if l < len(r["diag"]["layers"])
                                              else None for r in layered], markers=mk) for l in range(n_layers)]
        charts.append(line_chart(per_layer("h"), "Mean |h| per layer", "step", "mean |h|"))
        if any("c" in layer for r in layered for layer in r["diag"]["layers"]):
            charts.append(line_chart(per_layer("c"), "Mean |c| per layer (LSTM cell state)", "step", "mean |c|"))
        if any("sat" in layer for r in layered for layer in r["diag"]["layers"]):
            charts.append(line_chart(per_layer("sat"), "Saturated gates per layer (below 0.1 or above 0.9)",
                                     "step", "fraction"))
    out = ['<div class="charts">' + "".join(charts) + "</div>",
           f'<p class="note">Ratios near {RATIO_GUIDE:g} usually mean a healthy learning rate; far above, '
           'updates are too large; far below, too small. Layer statistics come from a fixed probe of the '
           'validation text read from a zero state.</p>']
    hist = next((r for r in reversed(recs) if isinstance(r.get("hist"), dict) and r["hist"]), None)
    if hist:
        hs = [histogram(float(h["lo"]), float(h["hi"]), [int(c) for c in h["counts"]], name, "weight")
              for name, h in hist["hist"].items()
              if isinstance(h, dict) and _num(h.get("lo")) is not None and _num(h.get("hi")) is not None
              and isinstance(h.get("counts"), list)]
        out.append(f"<h3>Weight histograms at step {hist['step']}</h3>")
        out.append('<div class="charts">' + "".join(hs) + "</div>")
    return "".join(out)


def final_table(evals: list[dict], ck_progress: dict, n_params: int | None) -> str:
    last = evals[-1] if evals else {}
    vals = [(r.get("val_bpc"), r.get("step")) for r in evals if _num(r.get("val_bpc")) is not None]
    best = min(vals, key=lambda t: t[0]) if vals else (None, None)
    rows = []

    def add(name, value):
        if value is not None:
            rows.append((name, value))
    add("steps", last.get("step", ck_progress.get("step")))
    add("epochs", last.get("epoch"))
    add("characters seen", last.get("chars"))
    el = _num(last.get("elapsed_s"))
    if el is not None:
        add("training time", f"{el / 60:.1f} min")
        if last.get("chars"):
            add("characters / second", round(last["chars"] / max(el, 1e-9)))
    add("final train bits/char (EMA)", _num(last.get("train_bpc")))
    add("final validation bits/char", _num(last.get("val_bpc")))
    add("final validation bits/char, averaged weights", _num(last.get("val_bpc_average")))
    if best[0] is not None:
        add("best validation bits/char", f"{best[0]:.4f} (step {best[1]})")
    add("final learning rate", _num(last.get("lr")))
    add("validations", len(evals))
    add("parameters", n_params)
    return table(rows, ("metric", "value"), "final")


def config_tables(ck) -> str:
    if ck is None:
        return '<p class="note">No readable checkpoint in the run directory: config not shown.</p>'
    model = [(k, v) for k, v in ck.config.to_dict().items()]
    args = [(k, json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v))
            for k, v in sorted(ck.train_args.items()) if k != "model"]   # the model table shows it
    return ("<h3>Model</h3>" + table(model, ("field", "value"), "config")
            + "<h3>Training flags</h3>" + table(args, ("flag", "value"), "train-args"))


MAX_SAMPLES = 40      # a long run validates hundreds of times; show an even selection


def samples_html(samples: list[dict], evals: list[dict]) -> str:
    if not samples:
        return '<p class="note">No samples recorded (samples.jsonl is absent: the run predates them).</p>'
    val_at = {r.get("step"): r.get("val_bpc") for r in evals}
    out = []
    if len(samples) > MAX_SAMPLES:
        keep = sorted(set(np.linspace(0, len(samples) - 1, MAX_SAMPLES).round().astype(int).tolist()))
        out.append(f'<p class="note">{len(keep)} of {len(samples)} samples, evenly spaced; all are in '
                   f'samples.jsonl.</p>')
        samples = [samples[i] for i in keep]
    for s in samples:
        v = _num(val_at.get(s.get("step")))
        head = (f"step {s.get('step')} · {s.get('chars', 0):,} characters seen"
                + (f" · validation {v:.3f} bits/char" if v is not None else "")
                + f" · temperature {s.get('temp')}, seed {s.get('seed')}")
        out.append(f'<div class="sample"><div class="note">{escape(head)}</div>'
                   f'<pre class="sample">{escape(str(s.get("text", "")))}</pre></div>')
    return "".join(out)


RELOAD_S = 10      # how often a live page reloads itself


def run_ended(rows: list[dict]) -> bool:
    """The trainer's last word on a run is a `stop` record; anything after it is a resumed run."""
    return bool(rows) and rows[-1].get("event") == "stop"


def _live_script(seconds: float) -> str:
    return f"setTimeout(function () {{ location.reload(); }}, {int(seconds * 1000)});"


def build_report(run_dir: str | os.PathLike, live: bool = False) -> str:
    """The HTML text of the report for one run directory. `live`: the page of a run in progress,
    which reloads itself every RELOAD_S seconds until the run's metrics say it has ended."""
    run = Path(run_dir)
    rows, bad = read_jsonl(run / "metrics.jsonl")
    evals = history([r for r in rows if "event" not in r and "chars" in r])
    events = [r for r in rows if "event" in r]
    samples, bad_s = read_jsonl(run / "samples.jsonl")
    samples = history(samples)
    if not evals:
        raise ReportError(f"{run}/metrics.jsonl has no validation records yet")
    ck, ck_name = _load_checkpoint(run)
    n_params = None
    if ck is not None:
        from charrnn.model import n_params as count
        n_params = count(ck.config)
    diag = diagnostics_html(rows)
    title = f"charrnn run: {run.resolve().name}"
    sub = []
    if ck is not None:
        c = ck.config
        sub.append(f"{c.layers}x{c.hidden} {c.cell.upper()}, vocabulary {c.vocab_size}")
        src = (ck.train_args.get("source") or {}).get("path")
        if src:
            sub.append(f"trained on {src}")
    sub += [str(e["reason"]) for e in events if e.get("event") == "stop" and e.get("reason")][-1:]
    notes = []
    if bad or bad_s:
        notes.append(f"{bad + bad_s} unreadable log line(s) skipped (a run killed mid-write leaves one).")
    reloading = live and not run_ended(rows)
    if live:
        state = (f"live: this page reloads every {RELOAD_S:g} s while the run goes on" if reloading else
                 "the run has ended; this page no longer reloads")
        notes.insert(0, state)
    body = [f'<div id="live" data-live="{int(reloading)}" data-validations="{len(evals)}"></div>' if live else "",
            f"<h1>{escape(title)}</h1>",
            f'<p class="sub">{escape(" · ".join(sub))}</p>' if sub else "",
            "".join(f'<p class="note">{escape(n)}</p>' for n in notes),
            '<h2 id="curves">Learning curves</h2>', curves(evals),
            *(['<h2 id="diagnostics">Diagnostics</h2>', diag] if diag else []),
            '<h2 id="final">Final metrics</h2>', final_table(evals, ck.progress if ck else {}, n_params),
            ("<h3>Events</h3><ul>" + "".join(f"<li>{escape(_event_text(e))}</li>" for e in events) + "</ul>"
             if events else ""),
            f'<h2 id="samples">Samples at each validation ({len(samples)})</h2>', samples_html(samples, evals),
            '<h2 id="config">Configuration</h2>',
            (f'<p class="note">from {escape(ck_name)}</p>' if ck_name else ""), config_tables(ck)]
    return page(title, "\n".join(body), css=".charts { display: flex; flex-wrap: wrap; }",
                script=_live_script(RELOAD_S) if reloading else "")

