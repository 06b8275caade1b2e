#!/usr/bin/env bash
# Regenerate docs/live.png (the live page of `train --report`, mid-run) and docs/lr-find.png
# (the page of `charrnn lr-find -o`), rendered by headless Chromium.
#   docs/screenshots_tuning.sh tinyshakespeare.txt
set -euo pipefail
text=${1:?usage: docs/screenshots_tuning.sh TEXT_FILE}
docs=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'kill "$train" 2>/dev/null || true; rm -rf "$tmp"' EXIT
shot() {   # shot PAGE PNG HEIGHT
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --no-first-run --hide-scrollbars --user-data-dir="$tmp/profile-$(basename "$2")" --window-size=1200,"$3" \
    --screenshot="$2" "$1" 2>/dev/null
}
charrnn lr-find "$text" -o "$tmp/lr.html"
shot "file://$tmp/lr.html" "$docs/lr-find.png" 760
charrnn train "$text" --out "$tmp/run" --report --val-every 100 --diag-every 25 --max-epochs 2 &
train=$!
until [ -f "$tmp/run/report.html" ] && [ "$(grep -c val_bpc "$tmp/run/metrics.jsonl")" -ge 4 ]; do sleep 2; done
sleep 1
shot "file://$tmp/run/report.html" "$docs/live.png" 1800
kill -INT "$train"; wait "$train" || true
ls -l "$docs"/live.png "$docs"/lr-find.png >&2
