#!/usr/bin/env bash
# Load-test report: `vtpga loadtest` at increasing producer rates (each for a fixed time)
# against a running pipeline, then docs/loadtest/report.md (the table, the setup) and
# docs/loadtest/report.png (sustained throughput and p50/p99 decision latency against
# the offered load; Python matplotlib, installed with pip if missing).
#
#   scripts/loadreport.sh                                  # a local deployment of its own
#   scripts/loadreport.sh --rates 1000,10000,max --duration 5s --workers 2
#   scripts/loadreport.sh --brokers localhost:29092        # a running deployment (docker compose)
#
# By default it starts, like scripts/loadtest.sh, a private tansu broker (in memory) and
# `vtpga run --source kafka --start latest --workers W`, and stops both at the end. With
# --brokers it drives the deployment behind those brokers instead; the reference CSVs
# must be those the pipeline decides with: --regions/--users, else generated with
# --data-users (10000), 100 extra regions and seed 42, the defaults of `vtpga seed`,
# docker-compose.yml and scripts/ec2/up.sh.
#
# Latency: from the transaction record's timestamp (set by the producer when it sends
# it) to the pipeline handing the decision to its Kafka producer (`decided_us` header).
# Binary: $VTPGA_BIN, else target/release/vtpga (built with cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."

work=""
pipeline_pid=""
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    if [ -n "$pipeline_pid" ] && kill -0 "$pipeline_pid" 2>/dev/null; then
        kill -INT "$pipeline_pid" 2>/dev/null || true
        wait "$pipeline_pid" 2>/dev/null || true
    fi
    [ -n "$work" ] || return 0
    if [ -d "$work/kafka" ]; then
        VTPGA_KAFKA_DIR="$work/kafka" scripts/kafka.sh stop >/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

rates="1000,5000,10000,20000,50000,max"
duration="10s"
workers=2
brokers=""
regions=""
users=""
data_users=10000
out="docs/loadtest"
while [ $# -gt 0 ]; do
    case "$1" in
    --rates) rates=${2:?}; shift 2 ;;
    --duration) duration=${2:?}; shift 2 ;;
    --workers) workers=${2:?}; shift 2 ;;
    --brokers) brokers=${2:?}; shift 2 ;;
    --regions) regions=${2:?}; shift 2 ;;
    --users) users=${2:?}; shift 2 ;;
    --data-users) data_users=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -n "${VTPGA_BIN:-}" ]; then
    bin="$VTPGA_BIN"
else
    cargo build --release --quiet
    bin=target/release/vtpga
fi

# matplotlib for the plot (idempotent).
if ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
    echo "installing matplotlib (pip)..." >&2
    python3 -m pip install -q matplotlib
fi


work="$(mktemp -d /tmp/vtpga-loadreport.XXXXXX)"
if [ -z "$regions" ] || [ -z "$users" ]; then
    "$bin" generate --out "$work/ref" --count 1 --users "$data_users" --extra-regions 100 \
        --seed 42 >/dev/null
    regions="$work/ref/regions.csv"
    users="$work/ref/users.csv"
fi

if [ -z "$brokers" ]; then
    deployment="local: a private tansu broker (in-memory storage, 4 partitions) and \`vtpga run --source kafka --workers $workers\` on this machine, Kafka sink only"
    port="${VTPGA_LOADTEST_PORT:-19492}"
    brokers="127.0.0.1:$port"
    VTPGA_KAFKA_DIR="$work/kafka" scripts/kafka.sh start "$port" 4 >/dev/null
    RUST_LOG=warn VTPGA_KAFKA_BROKERS="$brokers" "$bin" run --source kafka --start latest \
        --workers "$workers" --idle-slack-ms "${VTPGA_LOADTEST_SLACK_MS:-5}" \
        --regions "$regions" --users-csv "$users" \
        >"$work/pipeline.out" 2>"$work/pipeline.err" &
    pipeline_pid=$!
    sleep 3
    kill -0 "$pipeline_pid" 2>/dev/null || { cat "$work/pipeline.err" >&2; exit 1; }
else
    deployment="the running deployment behind \`$brokers\`"
fi

echo "load test: rates $rates, $duration each, against $brokers" >&2
status=0
RUST_LOG=warn VTPGA_KAFKA_BROKERS="$brokers" "$bin" loadtest --regions "$regions" --users "$users" \
    --rates "$rates" --duration "$duration" --linger-ms "${VTPGA_LOADTEST_LINGER_MS:-5}" \
    >"$work/table.md" || status=$?
[ -s "$work/table.md" ] || { echo "vtpga loadtest printed no table (exit $status)" >&2; exit 1; }

mkdir -p "$out"
python3 - "$work/table.md" "$out/report.png" <<'PY'
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

table, png = sys.argv[1], sys.argv[2]
rows = []
for line in open(table, encoding="utf-8"):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 8 or not cells[1].replace(".", "").isdigit():
        continue  # header, separator
    rate, produced, decided, sustained, p50, p99, p999, mx = cells
    rows.append((rate, float(produced), float(sustained), float(p50), float(p99)))
if not rows:
    sys.exit("no rows in the loadtest table")
offered = [r[1] for r in rows]
labels = [r[0] for r in rows]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
ax1.plot(offered, [r[2] for r in rows], "o-", label="sustained decisions/s")
low = min(offered + [r[2] for r in rows]) * 0.8
top = max(offered + [r[2] for r in rows]) * 1.25
ax1.plot([low, top], [low, top], ":", color="grey", label="decided = offered")
ax1.set_yscale("log")
ax1.set_xlabel("offered load (produced msg/s)")
ax1.set_ylabel("throughput (decisions/s)")
ax1.set_title("Throughput")
ax2.plot(offered, [r[3] for r in rows], "o-", label="p50")
ax2.plot(offered, [r[4] for r in rows], "s-", label="p99")
ax2.set_yscale("log")
ax2.set_xlabel("offered load (produced msg/s)")
ax2.set_ylabel("decision latency (ms, log scale)")
ax2.set_title("Latency: record timestamp to decision")
plain = FuncFormatter(lambda v, _: f"{v:g}")
for ax in (ax1, ax2):
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
# Minor tick labels only where the latencies span less than about a decade.
latencies = [r[3] for r in rows] + [r[4] for r in rows]
ax2.yaxis.set_minor_formatter(plain if max(latencies) < 20 * min(latencies) else NullFormatter())
for x, y, label in zip(offered, [r[2] for r in rows], labels):
    ax1.annotate(label, (x, y), textcoords="offset points", xytext=(4, -12), fontsize=8)
fig.tight_layout()
fig.savefig(png, dpi=110)
PY

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
{
    echo "# Load-test report"
    echo
    echo "Generated by \`scripts/loadreport.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`."
    echo
    echo "* Deployment: $deployment."
    echo "* Machine: $(nproc) cores (${cpu:-unknown CPU}), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM; the producer, the broker and the pipeline share it."
    echo "* Each step: \`vtpga loadtest\` produces generated transactions at the rate for $duration (producer linger ${VTPGA_LOADTEST_LINGER_MS:-5} ms), then waits for every decision."
    echo "* Latency: from the record timestamp the producer set to the pipeline handing the decision to its Kafka producer. Sustained tx/s: decisions over the time from the first to the last decision of the step."
    echo
    cat "$work/table.md"
    echo
    if [ "$status" != 0 ]; then
        echo "**Some produced messages were not decided within the drain time** (\`vtpga loadtest\` exited with status $status)."
        echo
    fi
    echo "![throughput and latency against offered load](report.png)"
    if [ -s "$work/pipeline.err" ]; then
        echo
        echo "Last status lines of the pipeline:"
        echo
        echo '```text'
        tail -n 5 "$work/pipeline.err"
        echo '```'
    fi
} >"$out/report.md"
cat "$out/report.md"
echo "wrote $out/report.md and $out/report.png" >&2
exit "$status"
