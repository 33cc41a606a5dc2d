#!/usr/bin/env bash
# The README's demo: amr end to end on the real clips in ../shared/data.
#   1. a sound library as people keep one: a plain folder of audio files, searched with no
#      manifest and no training (metadata from file names and embedded tags), then served;
#   2. trained: learn the paper's mid fusion on sfx-dev, index its test split, query, evaluate.
set -euo pipefail
SHARED=${SHARED:-../shared}
export AMR_WEIGHTS_DIR="$SHARED/weights"
export AMR_WORKSPACE=${AMR_WORKSPACE:-amr-workspace/demo}
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "1. a plain folder of sound files: extract (names and tags become metadata), index without training, search"
amr extract "$SHARED/data/sounds/audio"
amr index --zero-shot
amr query "dog barking" "a rooster crowing" "rain falling on a roof" --top 3 --format table --explain

step "2. the same index in a browser: amr serve (here on a free port, asked once through its JSON API)"
log=$(mktemp)
amr serve --port 0 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "http://" "$log" && break; sleep 0.2; done
url=$(grep -o 'http://[^ ]*' "$log" | head -1)
echo "serving at $url (open it in a browser to search and listen)" >&2
python3 -c "import json, sys, urllib.request; r = json.load(urllib.request.urlopen(sys.argv[1] + 'api/search?q=a+cat+meowing&limit=3')); print(*(f\"{x['rank']} {x['id']} {x['score']:.3f}\" for x in r['results']), sep='\n')" "$url"
kill $server; wait $server 2>/dev/null || true

step "3. trained: extract sfx-dev, train mid fusion from the zero-shot start (text encoder frozen, 5 epochs), index the test split"
amr extract "$SHARED/data/sfx-dev"
checkpoint=$(amr train --fusion mid --freeze-text --epochs 5 | python3 -c 'import json, sys; print(json.load(sys.stdin)["checkpoint"])')
amr index --split test
amr query "door slam" "glass breaking" --top 5 --format table

step "4. the same queries in a shell pipeline (jsonl on stdout)"
printf 'door slam\nglass breaking\n' | amr query - --top 1 --format jsonl

step "5. evaluate on the test split: trained model, zero-shot and BM25 side by side"
amr evaluate "$checkpoint" --zero-shot --ablate --bm25 --split test
