#!/usr/bin/env bash
# Dataset reader benchmark: samples/s on the gzip-chunked Fashion-MNIST file with 1 and 2 ranks
# (2 processes each reading rank r of 2 at the same time, no MPI needed) against in-memory data,
# then peak RSS for a generated 2 GB dataset against a 0.2 GB one: of a reader alone and of rank 0
# of a 2-rank training run streaming from the file.
#   usage: bench/reader_bench.sh [build-dir]      (default build/; needs target reader_bench)
# Disk: about 2.3 GB free under ${TMPDIR:-/tmp} for the generated datasets, deleted at the end,
# and 40 MB in <build-dir>/bench-data for the converted Fashion-MNIST, kept for later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bin=$build/bench/reader_bench
[[ -x $bin ]] || { echo "reader_bench.sh: build first: cmake --build $build --target reader_bench" >&2; exit 1; }
mkdir -p "$build/bench-data"
fashion=$build/bench-data/fashion-mnist.h5
[[ -f $fashion ]] || "$bin" convert "$fashion"
echo "file: $fashion, $(du -m "$fashion" | cut -f1) MB"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/reader-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Two processes at once; prints both lines and their combined rate (all samples / slower rank).
two_ranks() {
  "$bin" read "$fashion" 0 2 "$1" "$2" >"$tmp/r0" & "$bin" read "$fashion" 1 2 "$1" "$2" >"$tmp/r1" & wait
  cat "$tmp/r0" "$tmp/r1"
  awk '{ for (i = 1; i <= NF; ++i) { if ($(i + 1) == "samples" && $(i + 2) == "in") n += $i; if ($(i + 1) == "s") t = t > $i ? t : $i } }
       END { printf "  2 ranks together: %d samples in %.3f s = %.0f samples/s\n", n, t, n / t }' "$tmp/r0" "$tmp/r1"
}

echo "== Fashion-MNIST train split (60000 samples), global batch 256, prefetch on"
echo "   file: gzip chunks read per step; cache: reader's in-memory cache after a warm-up epoch;"
echo "   memory: plain array, same order and normalisation, no HDF5 (upper bound)"
for mode in file cache memory; do
  epochs=$([[ $mode == file ]] && echo 2 || echo 10)
  "$bin" read "$fashion" 0 1 "$mode" "$epochs"
  two_ranks "$mode" "$epochs"
done

echo "== peak RSS by dataset size: a reader (1 rank, batch 256, 400 steps), then rank 0 of a"
echo "   2-rank training run streaming from the file (global batch 64, 200 steps)"
[[ $(id -u) == 0 ]] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for size in 0.2 2; do
  "$bin" generate "$tmp/data-$size.h5" "$size"
  echo "   on disk: $(du -m "$tmp/data-$size.h5" | cut -f1) MB"
  "$bin" rss "$tmp/data-$size.h5" 400
  mpirun -np 2 "$build/mpicnn" train --data.path="$tmp/data-$size.h5" --data.eval_split=none --data.cache_mb=0 \
    --model.spec="conv(16,5) relu maxpool(2) conv(32,5) relu maxpool(4) flatten dense(100)" --train.max_steps=200 \
    --train.log_interval=100 --train.progress=lines --output "$tmp/run-$size" >/dev/null
  python3 -c 'import json, sys
rss = [json.loads(line).get("peak_rss_mb") for line in open(sys.argv[1]) if "\"train\"" in line]
print(f"   training, 2 ranks: peak RSS of rank 0 {max(rss):.1f} MB")' "$tmp/run-$size/metrics.jsonl"
  rm -rf "$tmp/data-$size.h5" "$tmp/run-$size"
done
