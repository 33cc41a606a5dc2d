#!/usr/bin/env bash
# The README's demo: amr end to end on the real clips in ../shared/data.
#   1. zero-shot: index a small sound library (audio + titles) and search it, no training;
#   2. trained: learn the paper's mid fusion on sfx-dev, index its test split, query, evaluate.
set -euo pipefail
SHARED=${SHARED:-../shared}
export AMR_WEIGHTS_DIR="$SHARED/weights"
export AMR_WORKSPACE=${AMR_WORKSPACE:-amr-workspace/demo}
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "1. zero-shot: extract the sounds library, index it without training, search it"
amr extract "$SHARED/data/sounds"
amr index --zero-shot
amr query "dog barking" "a rooster crowing" "rain falling on a roof" --top 3 --format table --explain

step "2. trained: extract sfx-dev, train mid fusion (text encoder frozen), index the test split"
amr extract "$SHARED/data/sfx-dev"
amr train --fusion mid --freeze-text --epochs 5
amr index --split test
amr query "door slam" "glass breaking" --top 5 --format table

step "3. the same queries in a shell pipeline (jsonl on stdout)"
printf 'door slam\nglass breaking\n' | amr query - --top 1 --format jsonl

step "4. evaluate on the test split: trained model, zero-shot and BM25 side by side"
amr evaluate --zero-shot --bm25 --split test
