#!/usr/bin/env bash
# Build docker/Dockerfile.gateway into a real image on a machine with no Docker engine and no
# container registry, then check that the image holds no torch, Triton, PyAV or numpy and that
# the gateway starts from it (issue #14).
#
#   sudo apt-get install -y buildah debootstrap      # Debian/Ubuntu; run this script as root
#   scripts/build_gateway_image.sh
#
# The Dockerfile is built as it is. Its base, python:3.11-slim, cannot be pulled without a
# registry, so a stand-in is made: a Debian bookworm rootfs (debootstrap, the distribution
# python:3.11-slim is built on; its Python is 3.11) with a venv first on PATH, so that the
# Dockerfile's `pip install .` and `useradd` run as they would on the real one. The stand-in
# is tagged python:3.11-slim in a storage of this script's own (.cache/image/storage), never
# in the host's, and is labelled as a stand-in. Sizes therefore differ from an image built on
# the real python:3.11-slim; the layer the Dockerfile adds is the comparable number.
#
# buildah runs with the vfs driver and chroot isolation: no overlayfs, no user namespaces and
# no OCI runtime needed (podman/crun cannot set rlimits in some sandboxes). pip inside the
# build reaches the index the host's pip uses: a pip.conf made from the host's settings and the
# host's CA bundle are mounted over files of the base for the RUN steps only, so nothing
# host-specific is baked in (the check below reads the new layer to be sure).
#
# Reruns reuse the rootfs and the base image; `rm -rf .cache/image` starts from scratch.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), GATEWAY_PORT (8000, the
# image's CMD; must be free), GATEWAY_REDIS_URL (redis://127.0.0.1:6379/15; the gateway only
# reads it here).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=$ROOT/.cache/image
ROOTFS=$CACHE/rootfs
DOCKERFILE=$ROOT/docker/Dockerfile.gateway
IMAGE=localhost/omnibatch-gateway:latest
ARCHIVE=$CACHE/omnibatch-gateway.oci.tar
CHECK_CTR=omnibatch-gateway-check
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PORT=${GATEWAY_PORT:-8000}
REDIS_URL=${GATEWAY_REDIS_URL:-redis://127.0.0.1:6379/15}
STORE=(--root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs)

step() { printf '\n== %s (%ds)\n' "$*" "$SECONDS"; }
die() { printf 'build_gateway_image: %s\n' "$*" >&2; exit 1; }
bah() { buildah "${STORE[@]}" "$@"; }

[[ $(id -u) == 0 ]] || die "run as root (debootstrap, chroot and buildah's vfs storage need it)"
for tool in buildah debootstrap python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y buildah debootstrap)"
done
mkdir -p "$CACHE"

# The stand-in takes the name the Dockerfile's FROM asks for.
BASE=$(awk '$1 == "FROM" { print $2; exit }' "$DOCKERFILE")
[[ $BASE == python:3.11-slim ]] || die "the Dockerfile's base is $BASE; the stand-in is bookworm's Python 3.11"

step "base rootfs: Debian bookworm + python3.11 (debootstrap; reused when present)"
if [[ ! -e $ROOTFS/.complete ]]; then
    rm -rf "$ROOTFS" "$ROOTFS.tmp"
    # minbase has passwd (useradd); python3-venv brings pip via ensurepip.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOTFS.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 30 "$CACHE/debootstrap.log"; die "debootstrap failed ($CACHE/debootstrap.log)"; }
    # python:3.11-slim has `python` and `pip` on PATH and lets pip install system-wide; a
    # venv put first on PATH gives the same to the Dockerfile without touching Debian's python.
    chroot "$ROOTFS.tmp" python3 -m venv /opt/python
    # The build mounts its pip settings over this empty file (the venv's own pip.conf): a
    # mount onto a path the base lacks would leave an empty file behind in the image.
    touch "$ROOTFS.tmp/opt/python/pip.conf"
    rm -rf "$ROOTFS.tmp"/var/cache/apt/archives/*.deb "$ROOTFS.tmp"/var/lib/apt/lists/*
    touch "$ROOTFS.tmp/.complete"
    mv "$ROOTFS.tmp" "$ROOTFS"
    bah rmi -f "$BASE" >/dev/null 2>&1 || true  # the base image, if any, came from an older rootfs
fi

step "base image: the rootfs as $BASE (stand-in, in $CACHE/storage only)"
if ! bah inspect --type image "$BASE" >/dev/null 2>&1; then
    ctr=$(bah from --name omnibatch-base-import scratch)
    mnt=$(bah mount "$ctr")
    cp -a "$ROOTFS"/. "$mnt"/
    rm -f "$mnt/.complete"
    bah umount "$ctr" >/dev/null
    bah config --env PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd python3 \
        --label "org.opencontainers.image.description=stand-in for $BASE: debootstrap bookworm, venv at /opt/python" \
        "$ctr"
    bah commit --quiet --rm "$ctr" "docker.io/library/$BASE" >/dev/null
fi

step "pip settings for the build, from the host's pip"
# `pip config list` shows the host's files and PIP_* variables (these win). Keep the indexes
# (http(s) only: file:// ones are host paths) and trusted hosts; mount the CA bundle pip trusts.
CA=$(python3 - "$CACHE/build-pip.conf" <<'EOF'
import subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                     text=True, check=True).stdout.splitlines()
settings = {}
for line in sorted(out, key=lambda line: line.startswith(":env:")):
    key, _, value = line.partition("=")
    settings[key.rpartition(".")[2]] = value.strip("'\"")
urls = lambda key: [u for u in settings.get(key, "").split() if u.startswith(("http:", "https:"))]
lines = ["[global]", "index-url = " + (urls("index-url") or ["https://pypi.org/simple"])[0],
         "cert = /etc/ssl/certs/ca-certificates.crt"]
if urls("extra-index-url"):
    lines.append("extra-index-url = " + " ".join(urls("extra-index-url")))
if settings.get("trusted-host"):
    lines.append("trusted-host = " + settings["trusted-host"])
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print(settings.get("cert", "/etc/ssl/certs/ca-certificates.crt"))
EOF
)
sed 's/^/    /' "$CACHE/build-pip.conf"
[[ -f $CA ]] || die "no CA bundle at $CA"
echo "    CA bundle: $CA"

step "build $DOCKERFILE (buildah bud, vfs, chroot isolation)"
bah rm "$CHECK_CTR" >/dev/null 2>&1 || true
bah rmi -f "$IMAGE" >/dev/null 2>&1 || true  # vfs keeps whole copies: do not pile up old builds
# --format docker as `docker build` does (the OCI format drops HEALTHCHECK).
bah bud --pull=never --isolation chroot --network host --format docker \
    -v "$CACHE/build-pip.conf:/opt/python/pip.conf:ro" \
    -v "$CA:/etc/ssl/certs/ca-certificates.crt:ro" \
    -f "$DOCKERFILE" -t "$IMAGE" "$ROOT" >"$CACHE/bud.log" 2>&1 \
    || { tail -n 40 "$CACHE/bud.log"; die "buildah bud failed ($CACHE/bud.log)"; }
grep -E '^(STEP|Successfully installed)' "$CACHE/bud.log" | fold -s -w 100

step "check the image: imports, no worker dependencies, packages"
ctr=$(bah from --pull=never --name "$CHECK_CTR" "$IMAGE")
key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')  # the gateway's API key
gateway_pid=
cleanup() {
    if [[ -n $gateway_pid ]]; then  # killing `buildah run` ends the gateway under it
        kill "$gateway_pid" 2>/dev/null || true
        wait "$gateway_pid" 2>/dev/null || true
    fi
    bah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
run_in() { bah run --isolation chroot --network host "$@"; }
run_in -e "OMNIBATCH_API_KEYS=check:$key" "$ctr" -- python -c '
import importlib.util, os, sys
import cli.main, cli.serve, service.main, service.webhooks  # omnibatch gateway and webhooks
from contract.settings import GatewaySettings
service.main.create_app(GatewaySettings())
print("python", sys.version.split()[0], "at", sys.executable, "as uid", os.getuid())
absent = ["torch", "triton", "av", "numpy", "workers", "kernels"]
for name in absent:
    assert importlib.util.find_spec(name) is None, f"{name} is importable in the gateway image"
    assert name not in sys.modules, name
print("not importable:", ", ".join(absent))
loaded = sorted({m.partition(".")[0] for m in sys.modules} & {"cli", "contract", "media", "service"})
print("gateway imported (cli.main, cli.serve, service.main, service.webhooks); create_app ok;",
      "our packages loaded:", ", ".join(loaded))
assert os.path.getsize("/opt/python/pip.conf") == 0, "the pip settings of the build stayed"
'
run_in "$ctr" -- pip list --format=freeze --disable-pip-version-check >"$CACHE/packages.txt"
echo "$(wc -l <"$CACHE/packages.txt") distributions (pip list; $CACHE/packages.txt):"
tr '\n' ' ' <"$CACHE/packages.txt" | fold -s -w 100 | sed 's/^/    /'; echo

step "start the gateway from the image (its CMD, port $PORT) against $REDIS_URL"
python3 -c "import socket; socket.create_server(('0.0.0.0', $PORT)).close()" 2>/dev/null \
    || die "port $PORT is in use (set GATEWAY_PORT)"
mapfile -t cmd < <(bah inspect --type image "$IMAGE" | python3 -c '
import json, sys
for arg in json.load(sys.stdin)["Docker"]["config"]["Cmd"]:
    print(arg)')
(( ${#cmd[@]} )) || die "the image has no CMD"
cmd=("${cmd[@]/#8000/$PORT}")  # the CMD's --port 8000, moved if GATEWAY_PORT says so
echo "    ${cmd[*]}"
# buildah itself in the background (not a function: $! must be buildah's pid, so that
# killing it ends the gateway).
buildah "${STORE[@]}" run --isolation chroot --network host -e "OMNIBATCH_REDIS_URL=$REDIS_URL" \
    -e "OMNIBATCH_API_KEYS=check:$key" "$ctr" -- "${cmd[@]}" >"$CACHE/gateway.log" 2>&1 &
gateway_pid=$!
for _ in $(seq 60); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$gateway_pid" 2>/dev/null || { cat "$CACHE/gateway.log"; die "the gateway exited"; }
    sleep 0.5
done
expect() {  # expect CODE URL [curl args]: the gateway answers URL with CODE
    local want=$1 url=$2 got; shift 2
    got=$(curl -sS -o "$CACHE/response" -w '%{http_code}' "$@" "http://127.0.0.1:$PORT$url")
    printf '    GET %-9s -> %s %s\n' "$url" "$got" "$(head -c 120 "$CACHE/response")"
    [[ $got == "$want" ]] || { cat "$CACHE/gateway.log"; die "GET $url: $got, expected $want"; }
}
expect 200 /healthz
expect 401 /v1/jobs
expect 200 /v1/jobs -H "Authorization: Bearer $key"  # reads Redis
if [[ $PORT == 8000 ]]; then  # the image's HEALTHCHECK probes port 8000
    mapfile -t probe < <(bah inspect --type image "$IMAGE" | python3 -c '
import json, sys
test = json.load(sys.stdin)["Docker"]["config"]["Healthcheck"]["Test"]
assert test[0] in ("CMD", "CMD-SHELL"), test
print(*(test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]), sep="\n")')
    run_in "$ctr" -- "${probe[@]}" || die "the image's HEALTHCHECK command failed"
    echo "    the image's HEALTHCHECK command passes"
fi

step "image"
bah push --quiet "$IMAGE" "oci-archive:$ARCHIVE:omnibatch-gateway:latest" >/dev/null
echo "    OCI archive: $ARCHIVE, $(du -m "$ARCHIVE" | cut -f1) MB"
python3 - "$ARCHIVE" <<'EOF'
import gzip, json, sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    blob = lambda digest: tar.extractfile("blobs/sha256/" + digest.split(":")[1])
    (entry,) = json.load(tar.extractfile("index.json"))["manifests"]
    layers = json.load(blob(entry["digest"]))["layers"]
    total = 0
    for i, layer in enumerate(layers):
        with gzip.open(blob(layer["digest"])) as f:
            size = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
        total += size
        what = "the stand-in base" if i < len(layers) - 1 else "what the Dockerfile adds"
        print(f"    layer {i}: {size / 1e6:6.1f} MB ({layer['size'] / 1e6:5.1f} MB gzip), {what}")
    print(f"    image: {total / 1e6:.1f} MB uncompressed")
    with tarfile.open(fileobj=blob(layers[-1]["digest"]), mode="r|gz") as added:
        names = {m.name.removeprefix("./") for m in added}
    mounted = {"opt/python/pip.conf", "etc/ssl/certs/ca-certificates.crt"}
    assert not names & mounted, f"the build's mounts are in the image: {names & mounted}"
    print(f"    the Dockerfile's layer: {len(names)} paths, none of the build's mounts")
EOF
echo "done in ${SECONDS}s"
