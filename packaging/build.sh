#!/usr/bin/env bash
# Builds the netkey packages: netkeyd and netkeyctl (never netkey-vendor), the systemd
# unit, the configuration file, man pages and shell completions.
#
#   packaging/build.sh [deb] [rpm]      (both when none is named)
#
# Needs `cargo install --locked cargo-deb cargo-generate-rpm`. Writes to $TARGET/packages/,
# where TARGET is $CARGO_TARGET_DIR or `target`; the generated man pages and completions
# go to $TARGET/assets/. See packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

formats=("$@")
if [ ${#formats[@]} -eq 0 ]; then
    formats=(deb rpm)
fi
for f in "${formats[@]}"; do
    case "$f" in
    deb) command -v cargo-deb >/dev/null || { echo "build.sh: cargo-deb is missing: cargo install --locked cargo-deb" >&2; exit 1; } ;;
    rpm) command -v cargo-generate-rpm >/dev/null || { echo "build.sh: cargo-generate-rpm is missing: cargo install --locked cargo-generate-rpm" >&2; exit 1; } ;;
    *) echo "build.sh: unknown package format '$f' (deb or rpm)" >&2; exit 2 ;;
    esac
done

TARGET="${CARGO_TARGET_DIR:-target}"
export CARGO_TARGET_DIR="$TARGET"
# Reproducible timestamps in both packages: the last commit's time.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH

echo "build.sh: release build of netkeyd and netkeyctl (LTO; takes a few minutes)"
cargo build --locked --release --bin netkeyd --bin netkeyctl

echo "build.sh: man pages and shell completions into $TARGET/assets/"
rm -rf "$TARGET/assets"
cargo run --locked --release --quiet --example gen_assets -- "$TARGET/assets"
gzip -9 --no-name "$TARGET/assets/man/netkeyd.8" "$TARGET/assets/man/netkeyctl.1"

out="$TARGET/packages"
mkdir -p "$out"
for f in "${formats[@]}"; do
    rm -f "$out"/netkey*."$f"
    case "$f" in
    deb)
        echo "build.sh: deb"
        # --no-build: built above; cargo-deb strips the binaries it packages.
        cargo deb --locked --no-build --output "$out/"
        ;;
    rpm)
        echo "build.sh: rpm"
        cargo generate-rpm --target-dir "$TARGET" --output "$out/"
        ;;
    esac
done
ls -l "$out"
