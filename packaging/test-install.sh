#!/usr/bin/env bash
# Tests the packages that packaging/build.sh made, on this machine, as root (CI runs it):
# installs the deb, checks its files and the unit, starts netkeyd from it the way the unit
# would (as the `netkey` user, without systemd), drives it with netkeyctl over loopback
# only, stops it, removes then purges the package and checks nothing is left; then checks
# the rpm's file list, config flags and scripts, and installs and erases it with rpm.
#
# Changes the machine: installs and purges the package `netkey` and its user, and leaves
# none of it behind, failing or not. Refuses to run where netkey is already installed (a
# real installation is not ours to purge), except under CI=true, where it can only be
# what an interrupted earlier run left, and is purged first.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-target}"
PORT=19470 # loopback only, never 1947
SOCK=/run/netkey/admin.sock
WORK="$(mktemp -d)"
DAEMON_PID=""
FINISHED=no
RPM_INSTALLED=no

step() { echo "== packages: $*"; }
fail() {
    echo "test-install: FAIL: $*" >&2
    exit 1
}

cleanup() {
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        sleep 2
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    if [ "$FINISHED" != yes ]; then
        [ -f "$WORK/netkeyd.log" ] && { echo "--- netkeyd's output:"; cat "$WORK/netkeyd.log"; }
        # Leave the machine as we found it.
        if dpkg-query -W -f='${Status}' netkey 2>/dev/null | grep -qv 'not-installed'; then
            dpkg --purge netkey >/dev/null 2>&1 || true
        fi
        rm -rf /run/netkey
        if [ "$RPM_INSTALLED" = yes ]; then
            rpm --dbpath "$WORK/rpmdb" -e netkey >/dev/null 2>&1 || true
            rm -rf /var/lib/netkey
            userdel netkey >/dev/null 2>&1 || true
            groupdel netkey >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$WORK"
}

[ "$(id -u)" -eq 0 ] || fail "needs root (installs the package)"
if dpkg-query -W -f='${Status}' netkey 2>/dev/null | grep -qv 'not-installed'; then
    if [ "${CI:-}" = true ]; then
        echo "test-install: purging the netkey package an earlier run left"
        dpkg --purge netkey
    else
        fail "the package netkey is installed here; purge it first (dpkg --purge netkey)"
    fi
fi
trap cleanup EXIT

debs=("$TARGET"/packages/netkey_*.deb)
rpms=("$TARGET"/packages/netkey-*.rpm)
[ -f "${debs[0]}" ] && [ ${#debs[@]} -eq 1 ] || fail "expected one deb in $TARGET/packages (run packaging/build.sh)"
[ -f "${rpms[0]}" ] && [ ${#rpms[@]} -eq 1 ] || fail "expected one rpm in $TARGET/packages (run packaging/build.sh)"
DEB="${debs[0]}"
RPM="${rpms[0]}"

step "maintainer scripts parse"
for s in packaging/debian/* packaging/rpm/*.sh; do
    sh -n "$s" || fail "$s: syntax error"
done

# What both packages must install, with the paths that differ per format.
common_files=(
    /usr/bin/netkeyd
    /usr/bin/netkeyctl
    /etc/netkey/netkeyd.toml
    /usr/share/man/man8/netkeyd.8.gz
    /usr/share/man/man1/netkeyctl.1.gz
    /usr/share/bash-completion/completions/netkeyd
    /usr/share/bash-completion/completions/netkeyctl
    /usr/share/fish/vendor_completions.d/netkeyd.fish
    /usr/share/fish/vendor_completions.d/netkeyctl.fish
    /usr/share/doc/netkey/README.md
    /usr/share/doc/netkey/copyright
)
deb_files=("${common_files[@]}"
    /lib/systemd/system/netkeyd.service
    /usr/share/zsh/vendor-completions/_netkeyd
    /usr/share/zsh/vendor-completions/_netkeyctl
)
rpm_files=("${common_files[@]}"
    /usr/lib/systemd/system/netkeyd.service
    /usr/share/zsh/site-functions/_netkeyd
    /usr/share/zsh/site-functions/_netkeyctl
)

step "deb: contents of $DEB"
deb_list="$(dpkg-deb -c "$DEB" | awk '{print $NF}' | sed 's#^\.##')"
for f in "${deb_files[@]}"; do
    grep -qxF "$f" <<<"$deb_list" || fail "the deb lacks $f"
done
if grep -q 'netkey-vendor' <<<"$deb_list"; then fail "the deb ships netkey-vendor"; fi
dpkg-deb -I "$DEB" conffiles | grep -qxF /etc/netkey/netkeyd.toml ||
    fail "/etc/netkey/netkeyd.toml is not a conffile of the deb"

step "deb: install"
dpkg -i "$DEB"
for f in "${deb_files[@]}"; do
    [ -f "$f" ] || fail "$f is not installed"
done
[ ! -e /usr/bin/netkey-vendor ] || fail "/usr/bin/netkey-vendor is installed"
getent passwd netkey >/dev/null || fail "no netkey user"
getent group netkey >/dev/null || fail "no netkey group"
[ "$(stat -c '%U:%G %a' /var/lib/netkey)" = "netkey:netkey 700" ] ||
    fail "/var/lib/netkey is $(stat -c '%U:%G %a' /var/lib/netkey), expected netkey:netkey 700"
/usr/bin/netkeyd --version
/usr/bin/netkeyctl --version
for page in /usr/share/man/man8/netkeyd.8.gz /usr/share/man/man1/netkeyctl.1.gz; do
    gzip -t "$page" || fail "$page is not gzip"
    zcat "$page" | grep -q '^\.TH' || fail "$page is not a man page"
done
# The shipped configuration is valid and, every setting commented out, the defaults.
/usr/bin/netkeyd --check-config --config /etc/netkey/netkeyd.toml | tee "$WORK/check-config"
grep -qx 'listen = "0.0.0.0:1947"' "$WORK/check-config" || fail "the shipped config does not give the default listen address"
grep -qx 'state_dir = "/var/lib/netkey"' "$WORK/check-config" || fail "the shipped config does not give the default state_dir"
# And every setting netkeyd has is documented in it (`#name = default`).
for key in $(grep -o '^[a-z_]* =' "$WORK/check-config" | cut -d' ' -f1); do
    grep -q "^#$key = " /etc/netkey/netkeyd.toml || fail "the shipped config does not document '$key'"
done

step "unit: systemd-analyze verify"
# verify exits 0 on a misspelt directive and only prints a warning: any output fails.
# --man=no: no man pages needed; --recursive-errors=no: only this unit, not the units it
# orders itself after, which may be absent or odd on a machine without systemd as PID 1.
out="$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no --recursive-errors=no \
    /lib/systemd/system/netkeyd.service 2>&1)" || fail "systemd-analyze verify failed: $out"
[ -z "$out" ] || fail "systemd-analyze verify complains: $out"

step "unit: systemd-analyze security (at most 2.0)"
systemd-analyze security --offline=true --threshold=20 /lib/systemd/system/netkeyd.service >"$WORK/security" 2>&1 ||
    { cat "$WORK/security"; fail "the unit's exposure is above 2.0"; }
tail -n 1 "$WORK/security"

step "run netkeyd as the netkey user, as the unit would (loopback only: TCP and UDP $PORT)"
# What RuntimeDirectory=netkey, RuntimeDirectoryMode=0750 would make.
install -d -o netkey -g netkey -m 0750 /run/netkey
(
    umask 0027
    exec setpriv --reuid=netkey --regid=netkey --init-groups --no-new-privs \
        --bounding-set=-all --inh-caps=-all \
        /usr/bin/netkeyd --config /etc/netkey/netkeyd.toml \
        --demo --no-broadcast --listen "127.0.0.1:$PORT" --discovery "127.0.0.1:$PORT"
) >"$WORK/netkeyd.log" 2>&1 &
DAEMON_PID=$!
ready=no
for _ in $(seq 1 60); do
    kill -0 "$DAEMON_PID" 2>/dev/null || fail "netkeyd exited at start"
    if netkeyctl --socket "$SOCK" status >/dev/null 2>&1; then
        ready=yes
        break
    fi
    sleep 0.5
done
[ "$ready" = yes ] || fail "netkeyd did not answer on $SOCK within 30 s"
[ "$(stat -c '%a %G' "$SOCK")" = "660 netkey" ] ||
    fail "$SOCK is $(stat -c '%a %G' "$SOCK"), expected 660 netkey"
# A member of the netkey group may administer; anyone else may not.
setpriv --reuid=65534 --regid=netkey --clear-groups netkeyctl --socket "$SOCK" status >/dev/null ||
    fail "the netkey group cannot use the admin socket"
if setpriv --reuid=65534 --regid=65534 --clear-groups netkeyctl --socket "$SOCK" status >/dev/null 2>&1; then
    fail "a user outside the netkey group can use the admin socket"
fi

step "enrol a video server and check out a camera"
code="$(netkeyctl --socket "$SOCK" pool code Default)"
client=(netkeyctl client --state "$WORK/vs.json" --demo --daemon "127.0.0.1:$PORT")
"${client[@]}" enrol "$code" --name ci
"${client[@]}" checkout cam-1
in_use="$(netkeyctl --socket "$SOCK" status --json | python3 -c '
import json, sys
status = json.load(sys.stdin)
print(sum(s["in_use"] for k in status["keys"] for s in k["seats"] if s["feature"] == "camera"))
')"
[ "$in_use" = 1 ] || fail "status shows $in_use camera seats in use, expected 1"
owned_by_others="$(find /var/lib/netkey ! -user netkey)"
[ -z "$owned_by_others" ] || fail "state files not owned by netkey: $owned_by_others"

step "stop netkeyd (SIGTERM)"
kill -TERM "$DAEMON_PID"
stopped=no
for _ in $(seq 1 60); do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        stopped=yes
        break
    fi
    sleep 0.5
done
[ "$stopped" = yes ] || fail "netkeyd did not stop within 30 s of SIGTERM"
status=0
wait "$DAEMON_PID" || status=$?
DAEMON_PID=""
[ "$status" -eq 0 ] || fail "netkeyd exited with status $status after SIGTERM"
rm -rf /run/netkey # what RuntimeDirectoryPreserve=no does

step "deb: remove keeps the state, the configuration and the user"
dpkg -r netkey
[ ! -e /usr/bin/netkeyd ] || fail "/usr/bin/netkeyd is left after remove"
[ -d /var/lib/netkey ] && [ -n "$(ls -A /var/lib/netkey)" ] || fail "remove deleted the state"
[ -f /etc/netkey/netkeyd.toml ] || fail "remove deleted the configuration"
getent passwd netkey >/dev/null || fail "remove deleted the netkey user"

step "deb: purge leaves nothing"
dpkg --purge netkey
for p in /usr/bin/netkeyd /usr/bin/netkeyctl /etc/netkey /var/lib/netkey /run/netkey \
    /lib/systemd/system/netkeyd.service /usr/share/doc/netkey; do
    [ ! -e "$p" ] || fail "$p is left after purge"
done
if getent passwd netkey >/dev/null; then fail "the netkey user is left after purge"; fi
if getent group netkey >/dev/null; then fail "the netkey group is left after purge"; fi
left="$(find /etc/systemd /var/lib/systemd -name '*netkeyd*' 2>/dev/null || true)"
[ -z "$left" ] || fail "systemd links left after purge: $left"
if dpkg-query -W -f='${Status}' netkey 2>/dev/null | grep -qv 'not-installed'; then
    fail "dpkg still knows netkey: $(dpkg-query -W -f='${Status}' netkey)"
fi

step "rpm: contents of $RPM"
rpm_list="$(rpm -qpl "$RPM")"
for f in "${rpm_files[@]}"; do
    grep -qxF "$f" <<<"$rpm_list" || fail "the rpm lacks $f"
done
if grep -q 'netkey-vendor' <<<"$rpm_list"; then fail "the rpm ships netkey-vendor"; fi
# c: config, n: noreplace.
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM" | grep -qx 'cn /etc/netkey/netkeyd.toml' ||
    fail "/etc/netkey/netkeyd.toml is not %config(noreplace) in the rpm"
scripts="$(rpm -qp --scripts "$RPM")"
for want in 'useradd -r -g netkey' 'systemctl enable netkeyd.service' 'systemctl disable --now netkeyd.service'; do
    grep -qF "$want" <<<"$scripts" || fail "the rpm's scriptlets lack '$want'"
done

step "rpm: install and erase with rpm itself (a private rpm database; --nodeps on Debian)"
# Runs the rpm's scriptlets for real: user, state directory, enable; disable on erase.
mkdir -p "$WORK/rpmdb"
rpm --dbpath "$WORK/rpmdb" --initdb
RPM_INSTALLED=yes
rpm --dbpath "$WORK/rpmdb" -i --nodeps "$RPM" 2>&1 | grep -v 'use Alien\|know what you are doing' || true
rpm --dbpath "$WORK/rpmdb" -q netkey >/dev/null || fail "rpm did not install netkey"
for f in "${rpm_files[@]}"; do
    [ -f "$f" ] || fail "$f is not installed by the rpm"
done
getent passwd netkey >/dev/null || fail "the rpm did not create the netkey user"
[ "$(stat -c '%U:%G %a' /var/lib/netkey)" = "netkey:netkey 700" ] ||
    fail "the rpm made /var/lib/netkey $(stat -c '%U:%G %a' /var/lib/netkey)"
/usr/bin/netkeyd --check-config --config /etc/netkey/netkeyd.toml >/dev/null
rpm --dbpath "$WORK/rpmdb" -e netkey 2>&1 | grep -v 'use Alien\|know what you are doing' || true
for p in /usr/bin/netkeyd /usr/bin/netkeyctl /usr/lib/systemd/system/netkeyd.service /etc/netkey; do
    [ ! -e "$p" ] || fail "$p is left after rpm -e"
done
left="$(find /etc/systemd -name '*netkeyd*' 2>/dev/null || true)"
[ -z "$left" ] || fail "systemd links left after rpm -e: $left"
# RPM keeps the state and the user on erase (no purge); clean up by hand.
rm -rf /var/lib/netkey
userdel netkey
if getent group netkey >/dev/null; then groupdel netkey; fi
RPM_INSTALLED=no

FINISHED=yes
echo "packages: all checks passed"
