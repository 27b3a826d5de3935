#!/usr/bin/env bash
# Builds the Tern runtime image without a container runtime, base-image
# registry or RUN steps: the binary is built on the host, the base root
# filesystem is made on the host, and the image is assembled from COPY steps
# only (deploy/Dockerfile.prebuilt). With network access and Docker, use
# deploy/Dockerfile instead (multi-stage, builds the binary inside).
#
# Usage: deploy/build-image.sh [--binary PATH] [--rootfs libs|debootstrap] [--tag REF] [--out DIR]
#   --binary   tern binary to ship (default: cargo build --release -p tern)
#   --rootfs   libs (default): only the shared libraries the binary links
#              (glibc, libgcc), /etc/passwd with user tern (10001), CA
#              certificates, /tmp and /var/lib/tern — a distroless-style base;
#              debootstrap: a Debian minbase root filesystem (debootstrap from
#              Debian's packages; needs root), then the same additions
#   --tag      image reference (default tern:<version>)
#   --out      output directory (default target/image)
# Output: OUT/context (the build context: rootfs/ + tern), OUT/tern-image.oci.tar
# (an OCI archive; `podman load -i` or `skopeo copy oci-archive:...`), and,
# when podman is installed, the image in podman's store under --tag, built
# with `podman build -f deploy/Dockerfile.prebuilt` (COPY-only).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
binary="" rootfs_kind=libs tag="" out="$root/target/image"
while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --rootfs) rootfs_kind=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/tern/Chart.yaml)
tag=${tag:-tern:$version}
if [ -z "$binary" ]; then
  cargo build --release --locked -p tern
  binary=target/release/tern
fi
[ -x "$binary" ] || { echo "no tern binary at $binary" >&2; exit 1; }

ctx="$out/context"
rm -rf "$ctx"
mkdir -p "$ctx/rootfs"
rfs="$ctx/rootfs"
case $rootfs_kind in
  libs)
    # Every shared object the binary needs, at the same path, plus the loader.
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
      install -D -m 0755 "$(readlink -f "$lib")" "$rfs$lib"
    done
    ;;
  debootstrap)
    command -v debootstrap >/dev/null || { echo "debootstrap missing (Debian: apt-get install debootstrap)" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rfs" >&2
    rm -rf "$rfs"/var/cache/apt/archives/*.deb "$rfs"/var/lib/apt/lists/*
    ;;
  *) echo "--rootfs is libs or debootstrap" >&2; exit 2 ;;
esac
mkdir -p "$rfs/etc" "$rfs/tmp" "$rfs/var/lib/tern" "$rfs/usr/local/bin"
chmod 1777 "$rfs/tmp"
grep -q '^tern:' "$rfs/etc/passwd" 2>/dev/null || {
  [ -f "$rfs/etc/passwd" ] || echo 'root:x:0:0:root:/root:/sbin/nologin' >"$rfs/etc/passwd"
  echo 'tern:x:10001:10001:tern:/var/lib/tern:/sbin/nologin' >>"$rfs/etc/passwd"
  [ -f "$rfs/etc/group" ] || echo 'root:x:0:' >"$rfs/etc/group"
  echo 'tern:x:10001:' >>"$rfs/etc/group"
}
[ -f "$rfs/etc/nsswitch.conf" ] || printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rfs/etc/nsswitch.conf"
if [ ! -e "$rfs/etc/ssl/certs/ca-certificates.crt" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rfs/etc/ssl/certs/ca-certificates.crt"
fi
install -m 0755 "$binary" "$ctx/tern"
cp deploy/Dockerfile.prebuilt "$ctx/Dockerfile"

# The image must run: the binary with only the root filesystem's libraries.
loader=$(ldd "$binary" | grep -o '/lib[^ ]*ld-linux[^ ]*' | head -n1)
if [ "$rootfs_kind" = libs ] && [ -n "$loader" ]; then
  "$rfs$loader" --library-path "$rfs/lib/x86_64-linux-gnu:$rfs/lib64:$rfs/usr/lib/x86_64-linux-gnu" "$ctx/tern" --version >/dev/null \
    || { echo "the binary does not run on the assembled root filesystem" >&2; exit 1; }
fi

# Assemble the image as a runtime would, from the COPY-only Dockerfile.
staged="$out/staged"
rm -rf "$staged"
cp -a "$rfs" "$staged"
install -D -m 0755 "$ctx/tern" "$staged/usr/local/bin/tern"
# As root, run the image's entrypoint in its root filesystem as its user
# (10001), the way the chart runs it: `tern config check` with defaults.
if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
  env -i TERN_DATA_DIR=/var/lib/tern "$(command -v chroot)" --userspec=10001:10001 "$staged" /usr/local/bin/tern config check >/dev/null \
    || { echo "tern does not run inside the image's root filesystem" >&2; exit 1; }
  echo "smoke test: /usr/local/bin/tern config check runs in the image root filesystem as 10001:10001" >&2
fi
python3 deploy/oci-archive.py "$staged" "$out/tern-image.oci.tar" "$tag"
rm -rf "$staged"
if command -v podman >/dev/null; then
  podman build -f "$ctx/Dockerfile" -t "$tag" "$ctx"
fi
echo "image: $out/tern-image.oci.tar ($tag); build context: $ctx"
