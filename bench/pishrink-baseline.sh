#!/usr/bin/env bash
# The baseline of bench/image-io.ts: what PiShrink does to an image, then xz as our pipeline runs it.
# A sparse copy; the last partition on a loop device by offset (no -P, as in containers); e2fsck,
# resize2fs -M (no zeroing of free blocks: PiShrink has none); the partition and the file cut to the
# filesystem's new end; xz -T0 -6. MBR only (a GPT would also need its backup header moved).
# Prints nothing but errors.
#
#   bench/pishrink-baseline.sh IMAGE OUT.img.xz
set -euo pipefail

if [[ $# -ne 2 || $2 != *.xz ]]; then
  echo "usage: $0 IMAGE OUT.img.xz" >&2
  exit 2
fi
image=$1
out=$2
img=${out%.xz} # the working copy; xz replaces it with OUT
loop=
child=

cleanup() {
  local status=$?
  if [[ -n $child ]]; then
    kill "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  if [[ -n $loop ]]; then losetup --detach "$loop" || true; fi
  rm -f "$img"
  if ((status != 0)); then rm -f "$out"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The long commands (cp, xz) run in the background: a signal then stops them at once (the shell
# runs its trap at once in `wait`, not after a foreground command ends).
long() {
  "$@" &
  child=$!
  wait "$child"
  child=
}

# Run a command silently; show its output only if it fails.
quiet() {
  local output status=0
  output=$("$@" 2>&1) || status=$?
  if ((status != 0)); then printf '%s\n' "$output" >&2; fi
  return "$status"
}

long cp --sparse=always "$image" "$img"

# Number and start sector (512 bytes) of the last partition.
read -r number start < <(partx --show --noheadings --output NR,START "$img" | tail -n 1)
loop=$(losetup --find --show --offset $((start * 512)) "$img")

# e2fsck -p exits 1 or 2 when it fixed something: only 4 and above are errors (as PiShrink).
status=0
output=$(e2fsck -pf "$loop" 2>&1) || status=$?
if ((status >= 4)); then
  printf '%s\n' "$output" >&2
  exit "$status"
fi
quiet resize2fs -M "$loop"

info=$(dumpe2fs -h "$loop" 2>/dev/null)
blocks=$(awk -F: '/^Block count:/ { print $2 + 0 }' <<<"$info")
block_size=$(awk -F: '/^Block size:/ { print $2 + 0 }' <<<"$info")
losetup --detach "$loop"
loop=

sectors=$((blocks * block_size / 512))
quiet sfdisk --no-reread --no-tell-kernel --wipe never --wipe-partitions never -N "$number" "$img" <<<", $sectors"
truncate --size $(((start + sectors) * 512)) "$img"

long xz -T0 -6 --force "$img"
