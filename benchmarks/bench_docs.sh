#!/usr/bin/env bash
# Regenerates docs/bench-*.{md,json,png}: rfc-bench on the embedded model and on each family's tiny model.
# Needs the bench extra for the cache-dit rows (pip install 'rfcache[bench]' torch==2.13.0); without it
# those rows are skipped with a message. About 30 min (toy) + 3-5 min per family on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bench() { python -m rfcache.cli.main bench --no-progress "$@"; }
[ "${TOY:-1}" = 1 ] && bench --samples 10 --json docs/bench-toy.json --markdown docs/bench-toy.md --plot docs/bench-toy.png
# rfcache.calibrate builds its own call arguments, which the tiny PixArt/SD3/Flux/Wan pipelines refuse
# (they need their small sizes): static profiles run on the DiTs only
peers=diffusers-taylorseer-m1,diffusers-taylorseer-m2,diffusers-fbc,diffusers-magcache,cache-dit-dbcache,cache-dit-dbcache-taylorseer
ours=fora,taylorseer-m1,taylorseer-m2,rfe-m1,rfe-m2,rcs,rfc
for family in ${FAMILIES:-dit pixart sd3 flux wan}; do
  methods="$ours,$peers"
  [ "$family" = dit ] && methods="$ours,static,$peers"
  bench --model "tiny:$family" --methods "$methods" --samples 4 --repeats 2 --calibrate-trials 12 \
    --json "docs/bench-tiny-$family.json" --markdown "docs/bench-tiny-$family.md" --plot "docs/bench-tiny-$family.png"
done
