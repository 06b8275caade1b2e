#!/usr/bin/env bash
# Regenerate docs/report.png and docs/viz-find.png: the report of a run and `viz --find` over a
# held-out text, rendered by headless Chromium.
#   docs/screenshots.sh checkpoints/shakespeare <(tail -c 20000 shakespeare.txt)
set -euo pipefail
run=${1:?usage: docs/screenshots.sh RUN_DIR TEXT_FILE}
text=${2:?usage: docs/screenshots.sh RUN_DIR TEXT_FILE}
docs=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
charrnn report "$run" -o "$tmp/report.html"
charrnn viz "$run" "$text" --find --length 20000 --show 1200 -o "$tmp/viz-find.html"
for page in report viz-find; do
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --no-first-run --hide-scrollbars --user-data-dir="$tmp/profile-$page" --window-size=1200,2200 \
    --screenshot="$docs/$page.png" "file://$tmp/$page.html" 2>/dev/null
done
ls -l "$docs"/*.png >&2
