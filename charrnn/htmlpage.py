"""The shell every charrnn HTML file shares: inline CSS, inline script, nothing fetched.

Pages record their own JavaScript errors on <html data-errors="..."> and set data-ready="1"
once loaded, so a headless browser's --dump-dom shows whether the page ran cleanly.
"""
from __future__ import annotations

from html import escape

from charrnn.svg import CSS as SVG_CSS

BASE_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1180px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 26px 0 6px; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre, .mono { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre.sample { background: #f8f8f8; border: 1px solid #e4e4e4; padding: 8px; white-space: pre-wrap; margin: 4px 0 12px; }
.note { color: #666; font-size: 12.5px; }
"""

# Records uncaught errors and console.error calls where --dump-dom can read them.
ERROR_HOOK = """(function () {
  var errs = [];
  function rec(m) { errs.push(String(m)); document.documentElement.setAttribute('data-errors', errs.join(' | ')); }
  window.addEventListener('error', function (e) { rec(e.message || 'error'); });
  var ce = console.error;
  console.error = function () { rec(Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); };
  window.addEventListener('load', function () { document.documentElement.setAttribute('data-ready', '1'); });
})();"""


def page(title: str, body: str, css: str = "", script: str = "") -> str:
    """A complete, self-contained HTML document."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<style>{BASE_CSS}{SVG_CSS}{css}</style>"
            f"<script>{ERROR_HOOK}</script></head>\n<body>\n{body}\n"
            + (f"<script>{script}</script>\n" if script else "")
            + "</body></html>\n")


def table(rows: list[tuple], header: tuple | None = None, cls: str = "") -> str:
    """An HTML table of already-formatted cells (escaped here); numbers right-aligned."""
    out = [f'<table class="{cls}">' if cls else "<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f'<td class="num">{escape(_num(v))}</td>' if num else f"<td>{escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _num(v: float) -> str:
    if isinstance(v, int):
        return f"{v:,}"
    if v != v:
        return "nan"
    return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:,.4f}".rstrip("0").rstrip(".")
