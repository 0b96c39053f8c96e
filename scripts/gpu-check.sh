#!/usr/bin/env bash
# `make gpu-check`: on a machine with an NVIDIA GPU, run the CUDA tests
# (tests/inference/test_cuda.py) and the inference benchmark in bfloat16 at several batch
# sizes (engine vs thread-per-request vs static batched generate), offline and bounded to
# well under 8 minutes. Results go to bench-results/gpu-check/ (pytest.log, junit.xml,
# bench.log, inference.json, inference.png, summary.txt); a short summary is printed.
# Without a visible CUDA device it fails at once, before loading anything.
#
# It downloads nothing: it needs the venv (`make install`) and the default model in
# $LLMSTREAM_HOME (`make model`) to be there already.
#
# usage: scripts/gpu-check.sh    (GPU_CHECK_LEVELS="1 8 32" sets the batch sizes)
set -euo pipefail
cd "$(dirname "$0")/.."

# GPU_CHECK_PYTHON: the interpreter (default: the project's venv); GPU_CHECK_OUT: the results.
py=${GPU_CHECK_PYTHON:-.venv/bin/python}
out=${GPU_CHECK_OUT:-bench-results/gpu-check}
read -r -a levels <<<"${GPU_CHECK_LEVELS:-1 8 32}"
tests_limit=150 # seconds for the CUDA tests
bench_limit=270 # seconds for the benchmark; with the checks, under 8 minutes in all

# Offline: no model hub, no package index.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1

fail() {
    echo "gpu-check: $*" >&2
    exit 1
}

command -v "$py" >/dev/null || fail "no Python at $py: run \`make install\` first"

# torch's own answer, so CUDA_VISIBLE_DEVICES, the driver and a CPU-only torch build all count.
rc=0
gpus=$(timeout -k 5 60 "$py" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    print(
        f"no CUDA device visible (torch {torch.__version__}, built for CUDA "
        f"{torch.version.cuda or 'none'}); run this on a machine with an NVIDIA GPU and its "
        "driver, and check CUDA_VISIBLE_DEVICES"
    )
    sys.exit(1)
names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(", ".join(f"cuda:{i} {name}" for i, name in enumerate(names)))
PY
) || rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    fail "asking torch for CUDA devices took over 60 s (a hung driver?)"
fi
[ "$rc" = 0 ] || fail "${gpus:-could not ask torch for CUDA devices (exit $rc)}"

model=$("$py" - <<'PY'
from llmstream_inference.models.default import NAME, is_complete
from llmstream_inference.models.sources import builtin_model_dir

folder = builtin_model_dir(NAME)
print(folder if is_complete(folder) else "")
PY
)
[ -n "$model" ] || fail "the default model is not in \$LLMSTREAM_HOME: run \`make model\` first"

largest=$(printf '%s\n' "${levels[@]}" | sort -n | tail -1)
rm -rf "$out"
mkdir -p "$out"
echo ">> gpu-check on $gpus"

echo ">> CUDA tests (at most ${tests_limit}s)"
tests_rc=0
timeout -k 10 "$tests_limit" "$py" -m pytest tests/inference/test_cuda.py -v -rs \
    -p no:cacheprovider --junitxml="$out/junit.xml" 2>&1 | tee "$out/pytest.log" ||
    tests_rc=$?

echo ">> benchmark: bfloat16, batch sizes ${levels[*]} (at most ${bench_limit}s)"
bench_rc=0
timeout -k 10 "$bench_limit" "$py" -m benchmarks.inference --out "$out" --device cuda \
    --dtype bfloat16 --levels "${levels[@]}" --max-batch-size "$largest" --hf-cb-levels \
    2>&1 | tee "$out/bench.log" || bench_rc=$?

"$py" - "$out" "$tests_rc" "$bench_rc" <<'PY' | tee "$out/summary.txt"
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, tests_rc, bench_rc = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


def verdict(rc: int) -> str:
    return {0: "ok", 124: "timed out", 137: "killed after timing out"}.get(rc, f"failed ({rc})")


print("\n== gpu-check summary ==")
junit = out / "junit.xml"
if junit.is_file():
    suite = ET.parse(junit).getroot().find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    print(f"CUDA tests: {verdict(tests_rc)}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
else:
    print(f"CUDA tests: {verdict(tests_rc)} (no junit report)")
report = out / "inference.json"
if not report.is_file():
    print(f"benchmark: {verdict(bench_rc)} (no results)")
    sys.exit(0)
data = json.loads(report.read_text())
print(f"benchmark: {verdict(bench_rc)}: {data['device']}, {data['dtype']}, tokens/s by batch size")
rows = {(r["design"], r["streams"]): r for r in data["results"]}
for streams in sorted({r["streams"] for r in data["results"]}):
    cells = [
        f"{design} {rows[(design, streams)]['tokens_per_s']:.0f}"
        for design in ("engine", "threads", "static")
        if (design, streams) in rows
    ]
    ratio = ""
    if ("engine", streams) in rows and ("static", streams) in rows:
        share = rows[("engine", streams)]["tokens_per_s"] / rows[("static", streams)]["tokens_per_s"]
        ratio = f" (engine/static {share:.2f})"
    print(f"  {streams:3d}: " + ", ".join(cells) + ratio)
print(f"results in {out}/")
PY

[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
