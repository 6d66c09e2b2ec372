#!/usr/bin/env bash
# Two `vllm serve` processes with ExPosST (127.0.0.1:8001 and :8002, each on its own
# CPUs) behind nginx on 127.0.0.1:8000, using deploy/nginx.conf (docs/deploy.md).
#
#   deploy/serve-two.sh MODEL [more `vllm serve` arguments]
#   BIND_1=0-15 BIND_2=16-31 deploy/serve-two.sh ~/.cache/vllm-exposst/SmolLM2-135M-Instruct \
#       --max-model-len 2048 --enable-lora --lora-modules ende=adapters/exposst-smollm2
#
# Ctrl-C stops all three.  Logs: $RUN_DIR (default /tmp/exposst-deploy).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 MODEL [vllm serve arguments]" >&2; exit 2; }
model=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
vllm=${VLLM:-$here/../.venv/bin/vllm}
nginx=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
run=${RUN_DIR:-/tmp/exposst-deploy}
binds=("${BIND_1:-0}" "${BIND_2:-1}")
start_timeout=${START_TIMEOUT:-600}
mkdir -p "$run"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait || true
}
trap cleanup EXIT INT TERM

for i in 1 2; do
    VLLM_CPU_OMP_THREADS_BIND=${binds[$((i - 1))]} "$vllm" serve "$model" \
        --host 127.0.0.1 --port $((8000 + i)) \
        --scheduler-cls vllm_exposst.scheduler.ExposstScheduler "$@" \
        >"$run/serve$i.log" 2>&1 &
    pids+=($!)
done

deadline=$((SECONDS + start_timeout))
for i in 1 2; do
    until curl -sf "http://127.0.0.1:$((8000 + i))/health" >/dev/null; do
        if ! kill -0 "${pids[$((i - 1))]}" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            echo "server $i did not start; see $run/serve$i.log" >&2
            exit 1
        fi
        sleep 2
    done
done

"$nginx" -p "$run" -c "$here/nginx.conf" -g 'daemon off;' &
pids+=($!)
echo "ready: http://127.0.0.1:8000 (servers :8001 :8002; logs in $run)"
wait -n "${pids[@]}"
