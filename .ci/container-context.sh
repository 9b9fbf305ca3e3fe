#!/usr/bin/env bash
# The image's build context, checked without a container engine (none runs on these
# machines): copy exactly the files deploy/Containerfile.dockerignore lets through,
# then run the Containerfile's build command on that copy, sharing the repository's
# target directory. Also checks that the DaemonSet, the systemd unit, the Containerfile
# and the README agree on the config path and the ports.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "container-context: $*" >&2; exit 1; }

ctx=$(mktemp -d /tmp/tierdns-context.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
# The ignore file's rules as written: "*" first, then "!PATH" lines re-include a file
# or a directory. Anything else in it is not supported here: fail rather than guess.
first=""
while IFS= read -r line; do
    case "$line" in
        ''|'#'*) continue ;;
        '*') first=1 ;;
        '!'*)
            [ -n "$first" ] || fail "a re-include before '*': $line"
            path=${line#!}; path=${path%/}
            [ -e "$path" ] || fail "the context names $path, which does not exist"
            mkdir -p "$ctx/$(dirname "$path")"
            cp -a "$path" "$ctx/$path"
            ;;
        *) fail "unsupported line in Containerfile.dockerignore: $line" ;;
    esac
done < deploy/Containerfile.dockerignore
# What the Containerfile copies must be in the context.
for copied in $(awk '$1 == "COPY" && $2 !~ /^--/ { for (i = 2; i < NF; i++) print $i }' deploy/Containerfile); do
    [ -e "$ctx/$copied" ] || fail "the Containerfile copies $copied, which the context leaves out"
done
# The manifest must load with exactly these files (this is what failed before:
# "failed to load manifest for workspace member loadtest").
cargo metadata --locked --format-version 1 --manifest-path "$ctx/Cargo.toml" >/dev/null \
    || fail "cargo cannot load the workspace from the build context"
CARGO_TARGET_DIR="$PWD/target" cargo build --release --locked --bin tierdns \
    --manifest-path "$ctx/Cargo.toml" 2>&1 | tail -1
[ -x target/release/tierdns ] || fail "no binary"
echo "container-context: the build context builds tierdns"

# One config path and the same ports everywhere.
conf=/etc/tierdns/tierdns.toml
for f in deploy/Containerfile deploy/daemonset.yaml deploy/tierdns.service; do
    grep -q "$conf" "$f" || fail "$f does not name $conf"
done
grep -q '9153' deploy/daemonset.yaml || fail "the DaemonSet does not name the metrics port 9153"
grep -q '9153' deploy/Containerfile || fail "the Containerfile does not expose 9153"
grep -q '53/udp' deploy/Containerfile || fail "the Containerfile does not expose 53/udp"
grep -q '"0.0.0.0:53"' deploy/daemonset.yaml || fail "the DaemonSet does not listen on port 53"
grep -q '9153' README.md || fail "the README does not name the metrics port"
echo "container-context: paths and ports agree"
