#!/usr/bin/env bash
# Regenerates docs/bench-*.{md,json,png}: rfc-bench on the embedded model and on each family's tiny model.
# Needs the bench extra for the cache-dit rows (pip install 'rfcache[bench]' torch==2.13.0); without it
# those rows are skipped with a message. About 30 min (toy) + 3-5 min per family on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bench() { python -m rfcache.cli.main bench --no-progress "$@"; }
bench --samples 10 --json docs/bench-toy.json --markdown docs/bench-toy.md --plot docs/bench-toy.png
for family in ${FAMILIES:-dit pixart sd3 flux wan}; do
  bench --model "tiny:$family" --samples 4 --repeats 2 --calibrate-trials 12 \
    --json "docs/bench-tiny-$family.json" --markdown "docs/bench-tiny-$family.md" --plot "docs/bench-tiny-$family.png"
done
