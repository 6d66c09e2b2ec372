#!/usr/bin/env bash
# The evaluations of docs/results.md: every method's BLEU-LAAL curve on two test
# slices, the lookahead-label ablation, and the slot_len sensitivity on a dev slice.
# Each run is one exposst-eval (one in-process vLLM engine) writing its record, table
# and plots under OUT/STEP/ADAPTER; a run whose record.json exists is skipped (resume).
#
#   bash eval/results_eval.sh DATA ADAPTERS OUT [STEP...]
#
# DATA: the folder holding multi30k/ and iwslt2017-ende/ (../shared/data here);
# ADAPTERS: the folder eval/train_results.py wrote;
# STEP: m30k, m30k-nola, slot, slot-m30k, iwslt (default: all, in that order), and
# refeed: the refeed-rule ablation (ADAPTERS/exposst-v1 = the first shipped adapter,
# ADAPTERS/exposst-smollm2 = the current one) on both test slices; cpu: the adapters
# trained on the CPU (eval/train_results.py --runs offline-cpu offline-cpu-2 exposst-cpu),
# ExPosST on all 1,000 sentences of test2016, offline SFT + recompute on its first 300,
# both on the IWSLT slice.
set -euo pipefail
DATA=${1:?data folder}; ADAPTERS=${2:?adapters folder}; OUT=${3:?output folder}; shift 3
STEPS=${*:-m30k m30k-nola slot slot-m30k iwslt}
EVAL="${EXPOSST_EVAL:-.venv/bin/exposst-eval}"
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-nobind}
WAITK=wait-1,3,5,7,9
M30K=("$DATA/multi30k/test_2016_flickr.en" "$DATA/multi30k/test_2016_flickr.de" 0 100)
IWSLT=("$DATA/iwslt2017-ende/test.en" "$DATA/iwslt2017-ende/test.de" 0 50)

run() {  # OUTDIR ADAPTER METHODS POLICIES SOURCE TARGET START LIMIT TITLE [EXTRA FLAGS...]
    if [ -f "$1/record.json" ]; then echo "done already: $1"; return; fi
    $EVAL --adapter "$ADAPTERS/$2" --modes "$3" --policies "$4" --source "$5" \
        --target "$6" --start "$7" --limit "$8" --output "$1" --title "$9" "${@:10}"
}

refeed() {  # NAME SOURCE TARGET START LIMIT: first adapter under both rules, current one
    local name=$1; shift
    run "$OUT/refeed/$name/v1-source" exposst-v1 exposst $WAITK "$@" "$name: v1, first rule" --no-refeed
    run "$OUT/refeed/$name/v1-refeed" exposst-v1 exposst $WAITK "$@" "$name: v1, refeed" --refeed
    run "$OUT/refeed/$name/v2-refeed" exposst-smollm2 exposst $WAITK "$@" "$name: v2, refeed" --refeed
}

curves() {  # NAME SOURCE TARGET START LIMIT
    local name=$1; shift
    # (b) ExPosST fine-tuning under exposst; (c) shift fine-tuning under shift (both
    # with lookahead labels); (a) offline SFT: the offline ceiling, test-time wait-k
    # under recompute and under shift.
    run "$OUT/$name/exposst-la" exposst-la exposst $WAITK "$@" "$name: ExPosST FT"
    run "$OUT/$name/shift-la" shift-la shift $WAITK "$@" "$name: shift FT"
    run "$OUT/$name/offline" offline offline,recompute,shift $WAITK "$@" "$name: offline SFT"
}

for step in $STEPS; do
    case $step in
    m30k) curves m30k "${M30K[@]}" ;;
    iwslt) curves iwslt "${IWSLT[@]}" ;;
    m30k-nola)  # the same fine-tuning without lookahead labels
        run "$OUT/m30k/exposst" exposst exposst $WAITK "${M30K[@]}" "m30k: ExPosST FT, no lookahead"
        run "$OUT/m30k/shift" shift shift $WAITK "${M30K[@]}" "m30k: shift FT, no lookahead" ;;
    slot)  # slot_len 2, 4, 8, 16 (lookahead labels), IWSLT dev [0:100], wait-3
        for adapter in exposst-la-slot2 exposst-la-slot4 exposst-la exposst-la-slot16; do
            run "$OUT/slot/$adapter" "$adapter" exposst wait-3 "$DATA/iwslt2017-ende/dev.en" \
                "$DATA/iwslt2017-ende/dev.de" 0 100 "slot_len: $adapter"
        done ;;
    slot-m30k)  # the same on the in-domain dev set, Multi30K val [0:100]
        for adapter in exposst-la-slot2 exposst-la-slot4 exposst-la exposst-la-slot16; do
            run "$OUT/slot-m30k/$adapter" "$adapter" exposst wait-3 "$DATA/multi30k/val.en" \
                "$DATA/multi30k/val.de" 0 100 "slot_len: $adapter"
        done ;;
    refeed) refeed m30k "${M30K[@]}"; refeed iwslt "${IWSLT[@]}" ;;
    cpu)
        M30K_ALL=("${M30K[@]:0:2}" 0 1000)
        run "$OUT/cpu/m30k/exposst-cpu" exposst-cpu exposst $WAITK "${M30K_ALL[@]}" \
            "Multi30K test2016: ExPosST FT (CPU, two stages)"
        run "$OUT/cpu/m30k/offline-cpu-2" offline-cpu-2 offline,recompute wait-1,3,5,7 \
            "${M30K[@]:0:2}" 0 300 "Multi30K test2016 [0:300]: offline SFT (CPU)"
        run "$OUT/cpu/iwslt/exposst-cpu" exposst-cpu exposst wait-3,7 "${IWSLT[@]}" \
            "IWSLT: ExPosST FT (CPU, two stages)"
        run "$OUT/cpu/iwslt/offline-cpu-2" offline-cpu-2 offline,recompute wait-3 "${IWSLT[@]}" \
            "IWSLT: offline SFT (CPU)" ;;
    *) echo "unknown step $step (m30k, m30k-nola, slot, slot-m30k, iwslt, refeed, cpu)" >&2
       exit 2 ;;
    esac
done
