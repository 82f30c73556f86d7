#!/usr/bin/env bash
# Regenerate the pictures of docs/study.md from a checkpoint (default: runs/demo/last.pt).
#   bash scripts/make_figures.sh [CHECKPOINT] [OUTDIR]
# Writes the synthetic SYSU-layout set to a temp folder, indexes its visible test images,
# searches a few infrared queries, and draws one picture of each kind.
set -euo pipefail
ckpt=${1:-runs/demo/last.pt}
out=${2:-docs/images}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
# the model's data: the synthetic people it was trained on (ids, seed), rendered at its input size
python - "$work/data" "$ckpt" <<'PY'
import sys
from dclnet.data.sources.synthetic import write_sysu
from dclnet.engine.checkpoint import load_checkpoint
state = load_checkpoint(sys.argv[2])
pre, data = state["preprocessing"], state.get("config", {}).get("data", {})
write_sysu(
    sys.argv[1],
    num_ids=int(data.get("synthetic_ids", 64)),
    seed=int(data.get("synthetic_seed", 0)),
    height=int(pre["height"]),
    width=int(pre["width"]),
)
PY
data="$work/data"
test_ids=$(tr ',' ' ' < "$data/exp/test_id.txt")
mkdir -p "$work/gallery" "$work/query"
for id in $test_ids; do
  p=$(printf %04d "$id")
  for c in 1 2 4 5; do [ -d "$data/cam$c/$p" ] && mkdir -p "$work/gallery/cam$c" && cp -r "$data/cam$c/$p" "$work/gallery/cam$c/"; done
  for c in 3 6; do [ -d "$data/cam$c/$p" ] && mkdir -p "$work/query/cam$c" && cp -r "$data/cam$c/$p" "$work/query/cam$c/"; done
done
dclnet index --checkpoint "$ckpt" --modality visible --images "$work/gallery" --output "$work/gallery.index"
queries=$(find "$work/query" -name '0001.jpg' | sort | head -n 4)
# shellcheck disable=SC2086
dclnet search --checkpoint "$ckpt" --index "$work/gallery.index" --query $queries \
  --query-modality infrared --topk 8 --json "$work/results.json"
dclnet visualize ranks --results "$work/results.json" --labels folder --output "$out/ranks.png"
first=$(printf %04d "$(echo $test_ids | cut -d' ' -f1)")
vis=$(find "$work/gallery" -path "*/$first/*" -name '*.jpg' | sort | head -n 1)
ir=$(find "$work/query" -path "*/$first/*" -name '*.jpg' | sort | head -n 1)
dclnet visualize masks --checkpoint "$ckpt" --modality infrared --images $(find "$work/query" -name '0001.jpg' | sort | head -n 4) --output "$out/masks.png"
dclnet visualize correspondence --checkpoint "$ckpt" --visible "$vis" --infrared "$ir" --top 20 --output "$out/correspondence.png"
dclnet visualize embedding --checkpoint "$ckpt" --visible "$work/gallery" --infrared "$work/query" --method tsne --output "$out/embedding.png"
dclnet visualize curves --run "$(dirname "$ckpt")" --output "$out/curves.png"
echo "pictures in $out"
