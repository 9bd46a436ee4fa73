#!/usr/bin/env bash
# Checks deploy/edgechat.service as it is shipped: `systemd-analyze verify` on the unchanged
# file inside a scratch root (target/systemd-root) that holds the distribution's units and,
# at the unit's ExecStart path, the edgechat binary built from this tree. verify only warns
# (exit 0) about unknown keys and bad values, so any output fails too. Then the offline
# security exposure must stay at or below EXPOSURE_MAX, in tenths (20 = 2.0 of 10; the unit
# scores 1.2).
#
#   bash deploy/verify.sh        # run from anywhere; needs systemd-analyze (Debian: systemd)
set -euo pipefail
cd "$(dirname "$0")/.."
EXPOSURE_MAX=${EXPOSURE_MAX:-20}
UNIT=edgechat.service
ROOT=target/systemd-root

[ -x target/debug/edgechat ] || cargo build -q -p edgechat-server --bin edgechat
exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "deploy/$UNIT")
[ -n "$exec_path" ] || { echo "deploy/$UNIT: no ExecStart" >&2; exit 1; }

rm -rf "$ROOT"
mkdir -p "$ROOT/etc/systemd/system" "$ROOT/usr/lib/systemd" "$ROOT$(dirname "$exec_path")"
# Targets and slices the unit is ordered against (network-online.target, sysinit.target...).
cp -r /usr/lib/systemd/system "$ROOT/usr/lib/systemd/"
cp "deploy/$UNIT" "$ROOT/etc/systemd/system/$UNIT"
ln -f target/debug/edgechat "$ROOT$exec_path" 2>/dev/null || cp target/debug/edgechat "$ROOT$exec_path"

out=$(systemd-analyze verify --root="$ROOT" "$UNIT" 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "systemd-analyze verify: deploy/$UNIT has problems:" >&2
    echo "$out" >&2
    exit 1
fi
echo "systemd-analyze verify: deploy/$UNIT is clean"
systemd-analyze security --offline=yes --root="$ROOT" --threshold="$EXPOSURE_MAX" "$UNIT" \
    | grep 'Overall exposure level' \
    || { echo "deploy/$UNIT: exposure above $EXPOSURE_MAX tenths" >&2; exit 1; }
