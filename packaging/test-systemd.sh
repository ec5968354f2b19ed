#!/usr/bin/env bash
# Tests the deb under a real systemd, for machines where systemd is not PID 1 (CI, this
# project's workstations): boots this machine's own root file system as a throwaway
# container (systemd-nspawn, a tmpfs overlay over a read-only view of /, no network but
# loopback), installs the deb in it and checks what test-install.sh cannot: Type=notify
# readiness and STATUS=, the whole sandbox of the unit, the watchdog, Restart=on-failure,
# stop, and the maintainer scripts' systemctl calls. Nothing is written to this machine.
#
#   packaging/test-systemd.sh          (root; after packaging/build.sh deb)
#
# Needs systemd-nspawn (apt-get install systemd-container). Not run by CI: it boots
# whatever services this machine has enabled, inside the container, which makes it
# depend on the machine more than CI should; run it after changing the unit.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-target}"
fail() {
    echo "test-systemd: FAIL: $*" >&2
    exit 1
}
[ "$(id -u)" -eq 0 ] || fail "needs root"
command -v systemd-nspawn >/dev/null || fail "needs systemd-nspawn: apt-get install systemd-container"
debs=("$TARGET"/packages/netkey_*.deb)
[ -f "${debs[0]}" ] || fail "no deb in $TARGET/packages (run packaging/build.sh deb)"

WORK="$(mktemp -d)"
ROOT="$WORK/root"
NSPAWN_PID=""
cleanup() {
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    fi
    mountpoint -q "$ROOT" 2>/dev/null && umount "$ROOT"
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$ROOT" "$WORK/pkg"
cp "${debs[0]}" "$WORK/pkg/netkey.deb"
mount --bind / "$ROOT" # nspawn will not take / itself
uuid="$(tr -d - </proc/sys/kernel/random/uuid)"
systemd-nspawn -q -D "$ROOT" --volatile=overlay --private-network --register=no --keep-unit \
    --uuid="$uuid" --bind-ro="$WORK/pkg:/mnt/pkg" --boot >"$WORK/console.log" 2>&1 &
NSPAWN_PID=$!

# The container's PID 1 is the child of systemd-nspawn.
leader=""
for _ in $(seq 1 60); do
    leader="$(pgrep -P "$NSPAWN_PID" -x systemd || true)"
    [ -n "$leader" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/console.log"; fail "the container did not start"; }
    sleep 0.5
done
[ -n "$leader" ] || fail "no systemd in the container"
ctr() { nsenter -t "$leader" -a -- "$@"; }
state="$(ctr timeout 120 systemctl is-system-running --wait || true)"
echo "container booted ($state)"

ctr sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i /mnt/pkg/netkey.deb >/dev/null'
ctr systemctl is-active --quiet netkeyd || {
    ctr systemctl status --no-pager netkeyd || true
    fail "netkeyd is not active after installation (Type=notify: READY=1 never came?)"
}
[ -n "$(ctr systemctl show -P StatusText netkeyd)" ] || fail "no STATUS= from netkeyd"
echo "installed: active, status: $(ctr systemctl show -P StatusText netkeyd)"

# Demo key, loopback only, then a video server through the sandboxed daemon.
# At the top of the file: the shipped one ends in a [limits] table, which keys appended
# after it would belong to.
ctr sh -c 'f=/etc/netkey/netkeyd.toml && { cat <<EOF
listen = "127.0.0.1:19470"
discovery = "127.0.0.1:19470"
demo = true
no_broadcast = true
EOF
cat "$f"; } >"$f.new" && mv "$f.new" "$f" && systemctl restart netkeyd'
ctr sh -c 'netkeyctl client --state /tmp/vs.json --demo --daemon 127.0.0.1:19470 enrol "$(netkeyctl pool code Default)" --name nspawn >/dev/null &&
    netkeyctl client --state /tmp/vs.json --demo checkout cam-1 >/dev/null' ||
    fail "enrol or checkout against the systemd-run daemon failed"
echo "a video server enrolled and checked out a camera"
[ "$(ctr stat -c '%a %U:%G' /run/netkey/admin.sock)" = "660 netkey:netkey" ] || fail "admin socket mode"
[ "$(ctr stat -c '%a %U:%G' /run/netkey)" = "750 netkey:netkey" ] || fail "/run/netkey mode"
[ "$(ctr stat -c '%a %U:%G' /var/lib/netkey)" = "700 netkey:netkey" ] || fail "/var/lib/netkey mode"

pid="$(ctr systemctl show -P MainPID netkeyd)"
ctr kill -KILL "$pid"
sleep 4
[ "$(ctr systemctl show -P NRestarts netkeyd)" = 1 ] && ctr systemctl is-active --quiet netkeyd ||
    fail "not restarted after SIGKILL"
echo "restarted after SIGKILL"

pid="$(ctr systemctl show -P MainPID netkeyd)"
ctr kill -STOP "$pid"
echo "stopped the process with SIGSTOP; waiting for the 30 s watchdog"
sleep 40
ctr journalctl -u netkeyd --no-pager | grep -q 'Watchdog timeout' || fail "the watchdog did not fire"
ctr systemctl is-active --quiet netkeyd || fail "not restarted after the watchdog fired"
echo "the watchdog fired and the service was restarted"

ctr systemctl stop netkeyd
[ "$(ctr systemctl show -P Result netkeyd)" = success ] || fail "stop: $(ctr systemctl show -P Result netkeyd)"
ctr test ! -e /run/netkey || fail "/run/netkey left after stop"
ctr systemctl start netkeyd
ctr dpkg -r netkey >/dev/null
ctr systemctl is-active --quiet netkeyd && fail "still running after dpkg -r"
ctr dpkg --purge netkey >/dev/null
ctr test ! -e /var/lib/netkey || fail "/var/lib/netkey left after purge"
ctr getent passwd netkey >/dev/null && fail "netkey user left after purge"
echo "dpkg -r stopped it; purge left nothing"

ctr systemctl poweroff >/dev/null 2>&1 || true
for _ in $(seq 1 30); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
echo "test-systemd: all checks passed"
