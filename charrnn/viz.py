"""`charrnn viz`: run a model over a text and colour each character by one cell's state or gate.

The activations come from reference.forward (its cache holds every layer's hidden states and
post-nonlinearity gates), one stream of batch 1 with the state carried across chunks. `find`
ranks cells by their correlation with simple properties of the text (position in the line,
inside quotes, inside brackets) and measures gate saturation per layer as in Karpathy,
Johnson & Fei-Fei, "Visualizing and Understanding Recurrent Networks" (2015): the fraction of
time each gate is left-saturated (< 0.1) or right-saturated (> 0.9).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape

import numpy as np

from charrnn import reference
from charrnn.htmlpage import page, table
from charrnn.model import ModelConfig, zero_state
from charrnn.svg import scatter
from charrnn.errors import VizError

# Gates by user-facing name -> block index in the gate layout of model.py (LSTM i,f,g,o; GRU r,z,n).
# The LSTM candidate g and the GRU candidate n are squashed inputs, not gates.
GATES = {"lstm": {"input": 0, "forget": 1, "output": 3}, "gru": {"reset": 0, "update": 1}, "rnn": {}}
GATE_NAMES = ("input", "forget", "output", "update", "reset")
FEATURES = {"column": "position in the line", "word": "position in the word",
            "quotes": 'inside "double quotes"', "brackets": "inside brackets or parentheses"}
_CONSTANT = {"column": "the text has no line structure", "word": "the text has no words",
             "quotes": "the text has no double quotes", "brackets": "the text has no brackets or parentheses"}
TOP_K = 5          # predictions shown on hover
SAT_LO, SAT_HI = 0.1, 0.9


@dataclass
class Trace:
    """Per character t, the state after reading it and the prediction for the next one."""
    chars: list[str]                      # display form of each symbol
    raw: list[str]                        # the symbols themselves (for features)
    h: list[np.ndarray]                   # per layer (N, H) outputs h
    c: list[np.ndarray | None]            # per layer (N, H) LSTM cell states, else None
    gates: list[np.ndarray | None]        # per layer (N, G*H) post-nonlinearity gates, None for the RNN
    top_idx: np.ndarray                   # (N, TOP_K) likeliest next symbols
    top_p: np.ndarray                     # (N, TOP_K) their probabilities


def _display(sym: str) -> str:
    return {"\n": "↵", "\t": "→", " ": " "}.get(sym, sym if sym.isprintable() else "·")


def trace(cfg: ModelConfig, params, codes: np.ndarray, symbols: list[str], chunk: int = 512) -> Trace:
    """Run the reference model over `codes` (one stream, state carried) and keep the activations."""
    p = params.astype(np.float32) if params.flat.dtype != np.float32 else params
    state = zero_state(cfg, 1)
    L = cfg.layers
    hs, cs, gs = [[] for _ in range(L)], [[] for _ in range(L)], [[] for _ in range(L)]
    tops, topp = [], []
    for s in range(0, len(codes), chunk):
        x = np.asarray(codes[s:s + chunk], dtype=np.int64).reshape(-1, 1)
        logits, cache, state = reference.forward(p, cfg, x, None, state)
        for l, (_, h, cc) in enumerate(cache["layers"]):
            hs[l].append(h[1:, 0])
            if cfg.cell == "lstm":
                gs[l].append(cc[0][:, 0])
                cs[l].append(cc[1][1:, 0])
            elif cfg.cell == "gru":
                gs[l].append(cc[0][:, 0])
        z = logits[:, 0].astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        pr = np.exp(z)
        pr /= pr.sum(axis=1, keepdims=True)
        k = min(TOP_K, pr.shape[1])
        idx = np.argsort(-pr, axis=1, kind="stable")[:, :k]
        tops.append(idx)
        topp.append(np.take_along_axis(pr, idx, axis=1))
    cat = lambda a: np.concatenate(a) if a else None   # noqa: E731
    return Trace(chars=[_display(c) for c in symbols], raw=list(symbols),
                 h=[cat(a) for a in hs], c=[cat(a) for a in cs], gates=[cat(a) for a in gs],
                 top_idx=np.concatenate(tops), top_p=np.concatenate(topp))


# ---------------------------------------------------------------- what to colour by
def parse_cell(spec: str, cfg: ModelConfig) -> tuple[int, int]:
    """'LAYER:INDEX' (0-based both) -> (layer, index), checked against the model."""
    try:
        a, b = spec.split(":")
        layer, idx = int(a), int(b)
    except ValueError:
        raise VizError(f"--cell {spec!r}: expected LAYER:INDEX, e.g. 1:37") from None
    if not 0 <= layer < cfg.layers:
        raise VizError(f"--cell {spec}: layer {layer} out of range (the model has layers 0..{cfg.layers - 1})")
    if not 0 <= idx < cfg.hidden:
        raise VizError(f"--cell {spec}: index {idx} out of range (each layer has cells 0..{cfg.hidden - 1})")
    return layer, idx


def check_choice(cfg: ModelConfig, state: str | None, gate: str | None) -> str:
    """Validate --state/--gate for this cell type; returns the state actually used (c or h)."""
    if state is None:
        state = "c" if cfg.cell == "lstm" else "h"
    if state == "c" and cfg.cell != "lstm":
        raise VizError(f"--state c: the {cfg.cell} cell has no separate cell state; use --state h")
    if gate is not None and gate not in GATES[cfg.cell]:
        have = ", ".join(GATES[cfg.cell]) or "none"
        raise VizError(f"--gate {gate}: the {cfg.cell} cell has no {gate} gate (its gates: {have})")
    return state


def state_matrix(tr: Trace, cfg: ModelConfig, layer: int, state: str) -> np.ndarray:
    """(N, H) values in [-1, 1]: tanh(c) for the LSTM cell state (as the 2015 paper plots it), h otherwise."""
    if state == "c":
        return np.tanh(tr.c[layer])
    return tr.h[layer]


def gate_matrix(tr: Trace, cfg: ModelConfig, layer: int, gate: str) -> np.ndarray:
    """(N, H) values in [0, 1] of one named gate."""
    H, k = cfg.hidden, GATES[cfg.cell][gate]
    return tr.gates[layer][:, k * H:(k + 1) * H]


# ---------------------------------------------------------------- text features and ranking
def features(raw: list[str]) -> dict[str, np.ndarray]:
    """Per character, properties of the text read so far (the state after reading it)."""
    n = len(raw)
    col, word, quote, brack = (np.zeros(n) for _ in range(4))
    c = w = q = depth = 0
    for t, ch in enumerate(raw):
        c = 0 if ch == "\n" else c + 1
        w = w + 1 if ch.isalnum() else 0
        if ch == '"':
            q ^= 1
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        col[t], word[t], quote[t], brack[t] = c, w, q, depth > 0
    return {"column": col, "word": word, "quotes": quote, "brackets": brack}


def correlations(feature: np.ndarray, values: np.ndarray) -> np.ndarray | None:
    """Pearson r of one feature (N,) with every column of values (N, H); None for a constant feature."""
    f = feature - feature.mean()
    sf = np.sqrt((f * f).sum())
    if sf == 0:
        return None
    v = values.astype(np.float64)
    v = v - v.mean(axis=0)
    sv = np.sqrt((v * v).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (f @ v) / (sf * sv)
    return np.where(sv > 0, r, 0.0)


@dataclass
class Found:
    feature: str
    layer: int
    index: int
    r: float


def find_cells(tr: Trace, cfg: ModelConfig, state: str, top: int = 3) -> tuple[list[Found], dict[str, str]]:
    """The `top` cells per feature by |r|, strongest first, and why a feature was skipped."""
    feats = features(tr.raw)
    found, skipped = [], {}
    mats = [state_matrix(tr, cfg, l, state) for l in range(cfg.layers)]
    for name, f in feats.items():
        rs = [correlations(f, m) for m in mats]
        if rs[0] is None:
            skipped[name] = _CONSTANT[name]
            continue
        allr = np.concatenate(rs)
        order = np.argsort(-np.abs(allr), kind="stable")[:top]
        found += [Found(name, int(i) // cfg.hidden, int(i) % cfg.hidden, float(allr[i])) for i in order]
    return found, skipped


def saturation(tr: Trace, cfg: ModelConfig) -> dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per layer, per gate: fractions of time each unit is below 0.1 and above 0.9."""
    out = {}
    for l in range(cfg.layers):
        if tr.gates[l] is None:
            continue
        out[l] = {}
        for g in GATES[cfg.cell]:
            m = gate_matrix(tr, cfg, l, g)
            out[l][g] = ((m < SAT_LO).mean(axis=0), (m > SAT_HI).mean(axis=0))
    return out


# ---------------------------------------------------------------- HTML
def _colour(v: float, signed: bool) -> str:
    """Signed values: blue (-1), white (0), red (+1); gates: white (0) to green (1)."""
    v = float(np.clip(v, -1.0, 1.0))
    if signed:
        end = (33, 102, 172) if v < 0 else (178, 24, 43)
        a = abs(v)
    else:
        end, a = (0, 119, 60), max(v, 0.0)
    r, g, b = (round(255 + (e - 255) * a) for e in end)
    return f"#{r:02x}{g:02x}{b:02x}"


def panel(tr: Trace, values: np.ndarray, title: str, signed: bool, pid: int) -> str:
    """One coloured copy of the text: a span per character, newlines kept."""
    spans = []
    for ch, v in zip(tr.chars, values):
        spans.append(f'<span style="background:{_colour(v, signed)}">{escape(ch)}</span>'
                     + ("\n" if ch == "↵" else ""))
    return (f'<div class="cellview"><div class="ptitle">{escape(title)}</div>'
            f'<div class="panel mono" data-panel="{pid}">{"".join(spans)}</div></div>')


def _scale(signed: bool) -> str:
    stops = np.linspace(-1, 1, 11) if signed else np.linspace(0, 1, 11)
    cells = "".join(f'<span style="background:{_colour(v, signed)}">{v:+.1f}</span>' for v in stops)
    return f'<div class="scale mono">{cells}</div>'


CSS = """
.panel { white-space: pre-wrap; word-break: break-all; border: 1px solid #ddd; padding: 6px; line-height: 1.6; }
.panel span { cursor: default; }
.panel span:hover { outline: 1px solid #000; }
.ptitle { font-weight: 600; margin: 14px 0 4px; }
.scale span { display: inline-block; padding: 0 4px; font-size: 11px; }
#tip { position: fixed; display: none; background: #fffff4; border: 1px solid #888; padding: 4px 8px;
       font: 12px ui-monospace, monospace; pointer-events: none; white-space: pre; box-shadow: 1px 1px 4px #0003; }
.sats { display: flex; flex-wrap: wrap; }
.cellviews { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 0 16px; }
"""

# Hover: the value under the pointer and the model's top-5 guesses for the next character.
SCRIPT = r"""
(function () {
  var D = JSON.parse(document.getElementById('viz-data').textContent);
  var tip = document.getElementById('tip');
  function show(ev) {
    var s = ev.target;
    if (s.tagName !== 'SPAN' || s._i === undefined) { tip.style.display = 'none'; return; }
    var i = s._i, pid = s.parentNode.getAttribute('data-panel');
    var lines = ['char ' + i + ': ' + JSON.stringify(D.text[i]) + '   value ' + D.values[pid][i].toFixed(3),
                 'next-character guesses:'];
    for (var k = 0; k < D.top[i].length; k++) {
      lines.push('  ' + JSON.stringify(D.vocab[D.top[i][k]]) + '  ' + (100 * D.prob[i][k]).toFixed(1) + '%');
    }
    tip.textContent = lines.join('\n');
    tip.style.display = 'block';
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 260) + 'px';
    tip.style.top = (ev.clientY + 14) + 'px';
  }
  var panels = document.querySelectorAll('.panel');
  for (var p = 0; p < panels.length; p++) {
    var kids = panels[p].children;
    for (var j = 0; j < kids.length; j++) kids[j]._i = j;
    panels[p].addEventListener('mousemove', show);
    panels[p].addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  }
})();
"""


@dataclass
class View:
    """One panel to draw: a title, its values (N,), and whether they are signed."""
    title: str
    values: np.ndarray
    signed: bool


def render(tr: Trace, views: list[View], show: int, heading: str, sub: str, vocab_symbols: list[str],
           found: list[Found] | None = None, skipped: dict[str, str] | None = None,
           sats: dict | None = None, cell: str = "lstm") -> str:
    """The viewer page: optional ranking and saturation sections, then the coloured panels."""
    n = min(show, len(tr.chars))
    shown = Trace(chars=tr.chars[:n], raw=tr.raw[:n], h=[], c=[], gates=[], top_idx=tr.top_idx[:n],
                  top_p=tr.top_p[:n])
    body = [f"<h1>{escape(heading)}</h1>", f'<p class="sub">{escape(sub)}</p>']
    if found is not None:
        body.append('<h2 id="found">Most interpretable cells</h2>')
        body.append('<p class="note">Pearson correlation of each cell with a property of the text read so far, '
                    'over every analysed character; the strongest |r| first.</p>')
        rows = [(FEATURES[f.feature], f"{f.layer}:{f.index}", round(f.r, 4)) for f in found]
        body.append(table(rows, ("tracks", "cell (layer:index)", "r"), "found"))
        for name, why in (skipped or {}).items():
            body.append(f'<p class="note">{escape(FEATURES[name])}: not ranked, {escape(why)}.</p>')
    if sats is not None:
        body.append('<h2 id="saturation">Gate saturation</h2>')
        if not sats:
            body.append(f'<p class="note">The {escape(cell)} cell has no gates.</p>')
        else:
            body.append('<p class="note">One point per cell and gate: the fraction of characters at which the gate is '
                        f'left-saturated (below {SAT_LO}) against right-saturated (above {SAT_HI}), as in Karpathy, '
                        'Johnson &amp; Fei-Fei (2015), figure 2.</p><div class="sats">')
            rows = []
            for l, per in sats.items():
                groups = [(g, [float(v) for v in lo], [float(v) for v in hi]) for g, (lo, hi) in per.items()]
                body.append(scatter(groups, f"layer {l}", "fraction left-saturated (< 0.1)",
                                    "fraction right-saturated (> 0.9)"))
                rows += [(l, g, round(float(lo.mean()), 4), round(float(hi.mean()), 4),
                          int(((lo + hi) > 0.9).sum())) for g, (lo, hi) in per.items()]
            body.append("</div>")
            body.append(table(rows, ("layer", "gate", "mean fraction < 0.1", "mean fraction > 0.9",
                                     "cells saturated > 90% of the time"), "satstats"))
    body.append('<h2 id="cells">Cells over the text</h2>')
    body.append('<p class="note">Each character is coloured by the value after reading it; hover for the value and '
                'the top-5 predictions for the next character.</p>')
    if any(v.signed for v in views):
        body.append(_scale(True))
    if any(not v.signed for v in views):
        body.append(_scale(False))
    body.append('<div class="cellviews">')
    for k, v in enumerate(views):
        body.append(panel(shown, v.values[:n], v.title, v.signed, k))
    body.append("</div>")
    data = {"text": tr.raw[:n], "vocab": vocab_symbols, "top": tr.top_idx[:n].tolist(),
            "prob": np.round(tr.top_p[:n], 4).tolist(),
            "values": [np.round(v.values[:n].astype(np.float64), 3).tolist() for v in views]}
    blob = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")
    body.append(f'<script type="application/json" id="viz-data">{blob}</script><div id="tip"></div>')
    return page(heading, "\n".join(body), css=CSS, script=SCRIPT)


# ---------------------------------------------------------------- the whole command
def build(ck, text: str | bytes, cells: list[str], state: str | None = None, gate: str | None = None,
          find: bool = False, top: int = 3, length: int = 10000, show: int = 2000,
          source: str = "") -> tuple[str, list[Found]]:
    """The viewer page for checkpoint `ck` over `text`, and the ranked cells (empty without find).

    `length` characters are analysed (correlations, saturation); the first `show` are drawn.
    """
    cfg, vocab = ck.config, ck.vocab
    state = check_choice(cfg, state, gate)
    picked = [parse_cell(s, cfg) for s in cells]
    if vocab.byte_mode:
        data = text.encode("utf-8") if isinstance(text, str) else text
        data = data[:length]
        codes = vocab.encode(data)
        symbols = [chr(b) for b in data]
        vocab_symbols = [chr(i) for i in range(256)]
    else:
        known = set(vocab.chars)
        symbols = [ch for ch in text if ch in known][:length]
        codes = vocab.encode("".join(symbols))
        vocab_symbols = list(vocab.chars)
    vocab_symbols += ["<end of document>"] * vocab.eod       # a model of documents predicts it too
    if len(codes) < 2:
        raise VizError("the text has fewer than two characters the model knows")
    tr = trace(cfg, ck.params, codes, symbols)
    found, skipped, sats = None, None, None
    if find:
        found, skipped = find_cells(tr, cfg, state, top)
        sats = saturation(tr, cfg)
        best_per = {}
        for f in found:                       # the strongest cell per feature gets a panel
            best_per.setdefault(f.feature, f)
        for f in best_per.values():
            if (f.layer, f.index) not in picked:
                picked.append((f.layer, f.index))
    what = f"{gate} gate" if gate else ("cell state tanh(c)" if state == "c" else "output h")
    views = []
    for layer, idx in picked:
        if gate:
            vals, signed = gate_matrix(tr, cfg, layer, gate)[:, idx], False
        else:
            vals, signed = state_matrix(tr, cfg, layer, state)[:, idx], True
        notes = [f"r = {f.r:+.2f} with {FEATURES[f.feature]}" for f in (found or [])
                 if (f.layer, f.index) == (layer, idx)]
        views.append(View(f"cell {layer}:{idx}, {what}" + (f" ({'; '.join(notes)})" if notes else ""),
                          vals, signed))
    heading = f"charrnn cells: {cfg.layers}x{cfg.hidden} {cfg.cell.upper()}"
    sub = (f"{source} · {len(codes):,} characters analysed, first {min(show, len(codes)):,} shown · "
           f"colour: {what}")
    return render(tr, views, show, heading, sub, vocab_symbols, found, skipped, sats, cfg.cell), found or []


def page_for(checkpoint: str | None, text_file: str, cells: list[str], state: str | None = None,
             gate: str | None = None, find: bool = False, top: int = 3, length: int = 10000,
             show: int = 2000) -> str:
    """`charrnn viz` as one call: the checkpoint CHECKPOINT names (a file or run directory; None,
    the newest best under ./checkpoints) read over TEXT_FILE ("-" for stdin), as build()'s page."""
    from charrnn import checkpoint as ckpt
    from charrnn.corpus import MODEL_HINT, read_input
    ck = ckpt.load(ckpt.resolve(checkpoint))
    text = read_input(text_file, byte_mode=ck.vocab.byte_mode, hint=MODEL_HINT)
    html, _ = build(ck, text, cells, state, gate, find, top, length, show,
                    source="stdin" if text_file == "-" else text_file)
    return html
