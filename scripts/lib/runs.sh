#!/usr/bin/env bash
# Shared by scripts/results-table and scripts/arena: resumable `selar eval` runs and their reports.
# The caller sets RUNS (where the generations go, not committed), TPY (the transformers environment's
# python, which writes the reports) and COMMON (eval arguments for every run). When it also sets
# LEDGER (a committed folder), every run is restored from it before it continues and saved to it with
# its report (scripts/lib/ledger.py: the records without prompts and gold answers), so that a run
# spans sessions: commit the ledger with the reports.

# a background job on a shared machine can be starved for minutes: vLLM's default 300 s limit per
# step would kill the run (it did, twice)
export VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=${VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS:-86400}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-3}

run() {  # run NAME PYTHON ENGINE_ARGS... -- EVAL_ARGS...
    local name=$1 py=$2
    shift 2
    local resume=() limit=0 methods="" samples=1 prev=""
    for a in "$@"; do  # a run that has every row is done: skip it without loading the engine
        [ "$prev" = --limit ] && limit=$a
        [ "$prev" = --methods ] && methods=$a
        [ "$prev" = --samples ] && samples=$a
        prev=$a
    done
    if [ -n "${LEDGER:-}" ]; then "$TPY" scripts/lib/ledger.py restore "$RUNS" "$LEDGER" "$name"; fi
    local count
    count=$("$TPY" -c "import sys; from selar.eval.config import expand_methods as e; print(len(e(sys.argv[1].split(','))))" "$methods")
    local want=$((limit * samples * count))
    if [ -f "$RUNS/$name/results.jsonl" ] && [ "$(wc -l < "$RUNS/$name/results.jsonl")" -ge "$want" ]; then
        echo "== $name: done ($want rows)"
        return 0
    fi
    [ -f "$RUNS/$name/run.json" ] && resume=(--resume)
    echo "== $name ($(date -u +%H:%M:%S))"
    "$py" -m selar eval "$@" "${COMMON[@]}" --out "$RUNS/$name" "${resume[@]}" || echo "!! $name stopped (exit $?)"
}

report() {  # report OUTDIR DIRS...: one report over the runs that exist
    local out=$1
    shift
    local dirs=()
    for d in "$@"; do
        if [ -n "${LEDGER:-}" ]; then "$TPY" scripts/lib/ledger.py restore "$RUNS" "$LEDGER" "$d"; fi
        [ -s "$RUNS/$d/results.jsonl" ] || continue
        dirs+=("$RUNS/$d")
        if [ -n "${LEDGER:-}" ]; then "$TPY" scripts/lib/ledger.py save "$RUNS" "$LEDGER" "$d"; fi
    done
    [ ${#dirs[@]} -gt 0 ] || return 0
    mkdir -p "$out"
    "$TPY" -m selar report "${dirs[@]}" --out "$out" --html > /dev/null
    sed -i "s#$RUNS/#runs/$(basename "$RUNS")/#g" "$out/report.md" "$out/report.html"
}
