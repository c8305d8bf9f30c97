#!/usr/bin/env bash
# make demo: compile an example schema, then answer one question from the cache and once
# without it, and show the time saved. Uses a demo cache folder inside the checkout.
set -euo pipefail
schema=${1:-schemas/gpl-manual.xml}
question=${2:-What is the program in the example called?}
export PC_CACHE_DIR=${PC_CACHE_DIR:-$PWD/.demo-cache}
echo "== pc compile $schema   (cache: $PC_CACHE_DIR)" >&2
pc compile "$schema"
echo >&2
echo "== pc ask (from the cache): $question" >&2
cached=$(pc ask --schema "$schema" --max-tokens 48 --json "$question")
echo "== pc ask --no-cache (prefill from scratch)" >&2
baseline=$(pc ask --schema "$schema" --max-tokens 48 --json --no-cache "$question")
python3 - "$cached" "$baseline" <<'PY'
import json, sys
c, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("cached answer:   ", c["answer"].strip())
print("no-cache answer: ", b["answer"].strip())
print(f"time to first token: {c['ttft_ms']:.0f} ms from the cache ({c['cached_tokens']} tokens loaded, "
      f"{c['computed_tokens']} computed) vs {b['ttft_ms']:.0f} ms without it: "
      f"{b['ttft_ms'] / c['ttft_ms']:.0f}x faster")
PY
