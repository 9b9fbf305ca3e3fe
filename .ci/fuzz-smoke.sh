#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for a bounded time (FUZZ_SECONDS,
# default 60), starting from its seed corpus fuzz/seeds/<target>: libFuzzer writes
# what it finds to a scratch corpus, never into the seeds.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never
seconds=${FUZZ_SECONDS:-60}
scratch=$(mktemp -d /tmp/tierdns-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz 2>&1 | tail -2
fi
passed=0 failed=0
for target in $(cargo fuzz list); do
  echo "--- fuzz $target for ${seconds}s"
  mkdir -p "$scratch/$target"
  seeds=()
  if [ -d "seeds/$target" ]; then seeds=("seeds/$target"); fi
  if timeout $((seconds + 600)) cargo fuzz run "$target" "$scratch/$target" "${seeds[@]}" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tail -4; then
    passed=$((passed + 1))
  else
    echo "FAIL: fuzz target $target"
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
