#!/usr/bin/env bash
# Regenerates docs/bench-*.{md,json,png}: rfc-bench on the two trained models (the embedded DiT and
# toy-flux) and on each family's tiny model. Needs the bench extra for the cache-dit and SmoothCache
# rows (pip install 'rfcache[bench]' torch==2.13.0); without it those rows are skipped with a message.
# About 50 min (toy) + 80 min (toy-flux) + 3-5 min per family on one core of a 2-core machine.
# TOY=0 / TOY_FLUX=0 / FAMILIES="" leave parts out. The prose about them is in docs/bench.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bench() { python -m rfcache.cli.main bench --no-progress "$@"; }
trained=fora,taylorseer-m2,rfe-m2,rfc,static,diffusers-taylorseer-m2,diffusers-fbc,diffusers-magcache,cache-dit-dbcache,smoothcache
if [ "${TOY:-1}" = 1 ]; then
  bench --methods "$trained" --samples 10 --tune-samples 1 --repeats 0 \
    --json docs/bench-toy.json --markdown docs/bench-toy.md --plot docs/bench-toy.png
fi
if [ "${TOY_FLUX:-1}" = 1 ]; then
  bench --model toy-flux --nfc 14,10,8 --methods "$trained" --samples 12 --tune-samples 1 --repeats 0 \
    --calibrate-trials 400 --json docs/bench-toy-flux.json --markdown docs/bench-toy-flux.md \
    --plot docs/bench-toy-flux.png
fi
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
