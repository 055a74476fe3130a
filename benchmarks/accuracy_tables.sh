#!/usr/bin/env bash
# The accuracy tables of the shipped vitdet-small on the held-out SynthVID split
# (30 sequences x 64 frames), on ONNX Runtime CPU. Writes JSON + Markdown under OUT.
#   main.*      dense and pruned at several K (the paper's table form)
#   radius.*    tracking window r at 1/1 and 1/4 sampling (the seed's Table 3);
#               radius-pull.* the same with the paper's tracking (no track union)
#   pruning-*.* the pruning settings ablation behind docs/pruning-small-model.md
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/eval}
RGTP=${RGTP:-.venv/bin/rgtp}
PKG="$OUT/pkg"
mkdir -p "$OUT"
# A fresh export every run: the package's manifest carries the model's pruning settings.
rm -rf "$PKG"
common=(--model vitdet-small --backend ort --package "$PKG" --quiet)

"$RGTP" eval "${common[@]}" --keep 64,77,96,128 --json "$OUT/main.json" --markdown "$OUT/main.md"
"$RGTP" eval "${common[@]}" --keep 77 --ablate-r 0,1,2,3 --sampling 1,4 \
    --json "$OUT/radius.json" --markdown "$OUT/radius.md"
# The same with the paper's tracking (pull only, no union with the previous position).
"$RGTP" eval "${common[@]}" --keep 77 --ablate-r 0,1,2,3 --sampling 1,4 --no-track-union \
    --json "$OUT/radius-pull.json" --markdown "$OUT/radius-pull.md"

# K = 77 (30 % of 256 tokens) from the authors' settings towards the shipped ones.
ablate() {
    local name=$1
    shift
    "$RGTP" eval "${common[@]}" --keep 77 --no-dense "$@" \
        --json "$OUT/pruning-$name.json" --markdown "$OUT/pruning-$name.md"
}
ablate paper --paper
ablate paper-last-block --paper --rollout-blocks 11
ablate paper-last-block-cosine --paper --rollout-blocks 11 --similarity cosine
ablate paper-last-block-cosine-novelty --paper --rollout-blocks 11 --similarity cosine \
    --novelty-share 0.15
ablate shipped-no-novelty --novelty-share 0
