#!/usr/bin/env bash
# Builds the CPU image with podman and runs it as its non-root user, as a user would:
# doctor, models pull, the demo (a swap of the sample clip), a run stopped by SIGTERM (it must
# exit at once, 143, and leave nothing at the output path), serve until its HEALTHCHECK passes, then SIGTERM and
# a clean exit within the grace period. Lints every Dockerfile.
#
# No image registry is reachable from CI, so the base image the Dockerfile names is
# replaced by a stand-in built from Debian's packages (mmdebstrap) and imported under that
# exact name; the build then runs with --pull=never. The host's CA bundle and a pip.conf
# that points at it are mounted into the build and the runs only (the images carry neither).
#
# Figures (build time, image size, start-up to healthy, stop time) go to
# .cache/images/figures.txt. Everything podman stores lives under .cache/images and is
# removed at the end unless KEEP_IMAGES=1.
set -euo pipefail
cd "$(dirname "$0")/../.."

WORK="$PWD/.cache/images"
GRACE_S=20
IMAGE=localhost/livefuse:ci-cpu
mkdir -p "$WORK"
FIGURES="$WORK/figures.txt"
: > "$FIGURES"

say() { echo "check_images: $*"; }
fail() { echo "check_images: FAILED: $*" >&2; exit 1; }
figure() { echo "$1" | tee -a "$FIGURES"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

install_tools() {
    local missing=()
    for tool in podman mmdebstrap runc; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        [ "$(id -u)" -eq 0 ] || fail "needs root to install ${missing[*]} (apt-get install podman buildah runc mmdebstrap)"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc mmdebstrap
    fi
}

configure_podman() {
    # crun fails every RUN step on this kind of host ("cgroups in hybrid mode"); runc with
    # cgroupfs works. The default ulimits are more than an unprivileged sandbox may set.
    cat > "$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    export CONTAINERS_CONF="$WORK/containers.conf"
    # pip inside the build and the containers trusts the host's CA bundle (a proxy may sit
    # between this machine and the package registry).
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$WORK/pip.conf"
    TRUST=(-v /etc/ssl/certs:/etc/ssl/certs:ro -v "$WORK/pip.conf:/etc/pip.conf:ro")
}

pm() { podman --root "$WORK/storage" --runroot "$WORK/run" "$@"; }

lint() {
    bash deploy/ci/install_tools.sh
    local files
    mapfile -t files < <(git ls-files '*Dockerfile*' '*Containerfile*')
    [ "${#files[@]}" -gt 0 ] || fail "no Dockerfile found"
    "$WORK/tools/bin/hadolint" "${files[@]}" || fail "hadolint found problems"
    say "hadolint: ${files[*]} clean"
}

stand_in_base() {
    BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' deploy/Dockerfile)
    [ -n "$BASE" ] || fail "deploy/Dockerfile has no ARG BASE_IMAGE=..."
    local full="docker.io/library/$BASE"
    if pm image exists "$full"; then
        return
    fi
    local start
    start=$(now)
    # python3-venv: the real python image has venv and pip; Debian splits them out.
    mmdebstrap --quiet --variant=minbase --include=python3-minimal,python3-venv,ca-certificates \
        bookworm "$WORK/base.tar"
    pm import --quiet "$WORK/base.tar" "$full" >/dev/null
    rm -f "$WORK/base.tar"
    figure "stand-in base $BASE (Debian bookworm minbase + python3-venv): $(since "$start") s"
}

build() {
    local start
    start=$(now)
    pm build --quiet --pull=never --network host --format docker -f deploy/Dockerfile --target cpu \
        --build-arg REVISION="$(git rev-parse --short HEAD)" "${TRUST[@]}" -t "$IMAGE" . >/dev/null
    figure "cpu image build: $(since "$start") s"
    local bytes
    bytes=$(pm image inspect --format '{{.Size}}' "$IMAGE")
    figure "cpu image size: $((bytes / 1000000)) MB"
}

run_lf() { pm run --rm --no-healthcheck --network host --shm-size=1g "${TRUST[@]}" -v lfci-data:/data "$IMAGE" "$@"; }

check_user_and_doctor() {
    local uid
    uid=$(pm run --rm --no-healthcheck --network none --entrypoint id "$IMAGE" -u)
    [ "$uid" = 10001 ] || fail "the image runs as UID $uid, not 10001"
    pm volume rm -f lfci-data >/dev/null 2>&1 || true
    pm volume create lfci-data >/dev/null

    local out
    out=$(pm run --rm --no-healthcheck --network none -v lfci-data:/data "$IMAGE" doctor --no-probe) || fail "doctor exited non-zero: $out"
    echo "$out"
    grep -q "CPU image, UID 10001" <<<"$out" || fail "doctor did not see the container"
    grep -q "no models are installed in /data/models" <<<"$out" || fail "doctor missed the empty models volume"
    grep -q -- "--shm-size=256m" <<<"$out" || fail "doctor missed podman's 64 MB /dev/shm"
    out=$(pm run --rm --no-healthcheck --network none --shm-size=1g -v lfci-data:/data "$IMAGE" doctor --no-probe)
    ! grep -q -- "--shm-size" <<<"$out" || fail "doctor warned about a 1 GiB /dev/shm"

    mkdir -p "$WORK/root-owned" && chmod 755 "$WORK/root-owned"
    if out=$(pm run --rm --no-healthcheck --network none -v "$WORK/root-owned:/data" "$IMAGE" doctor --no-probe); then
        fail "doctor passed with a volume UID 10001 cannot write"
    fi
    grep -q "not writable by this container's user (UID 10001, owned by UID 0)" <<<"$out" \
        || fail "doctor did not explain the unwritable volume: $out"
    say "doctor: container, /dev/shm, empty and unwritable volumes explained"
}

check_pull_and_demo() {
    local start
    start=$(now)
    run_lf models pull
    run_lf samples pull
    figure "models pull + samples pull in the container: $(since "$start") s"
    start=$(now)
    run_lf demo --output /data/demo
    figure "demo (swap of the 15 s 720p sample clip) in the container: $(since "$start") s"
    pm run --rm --no-healthcheck --network none -v lfci-data:/data --entrypoint python3 "$IMAGE" -c '
import av, sys
with av.open("/data/demo/demo-swapped.mp4") as f:
    n = sum(1 for _ in f.decode(video=0))
print(f"demo-swapped.mp4: {n} frames")
sys.exit(n < 400)' || fail "the demo video is missing or short"
}

check_run_stops_on_sigterm() {
    # PID 1 gets no default signal actions: without livefuse's own SIGTERM handler this run
    # would ignore docker stop and be killed (137) after the grace period. With it, the run
    # stops at once (143) and, like any stopped run, leaves nothing at the output path.
    # -v: the INFO line that says the models are loaded tells when the run is under way.
    # --detect-every 1 keeps the run busy for well over the 4 s it is given: at full speed the
    # 15 s clip can be written in ~5 s, and a stop that lands on a complete file rightly keeps
    # it, which is another case than the one checked here.
    pm rm -f lfci-run >/dev/null 2>&1 || true
    pm run -d --name lfci-run --no-healthcheck --network none --shm-size=1g -v lfci-data:/data "$IMAGE" \
        -v run --detect-every 1 --input /data/samples/demo.mp4 --output /data/stopped.mp4 \
        --source /data/samples/biden.jpg >/dev/null
    for _ in $(seq 1 120); do
        pm logs lfci-run 2>&1 | grep -q "runs on CPUExecutionProvider" && break
        sleep 0.5
    done
    sleep 4
    local start took code
    start=$(now)
    pm stop -t "$GRACE_S" lfci-run >/dev/null
    took=$(since "$start")
    code=$(pm inspect --format '{{.State.ExitCode}}' lfci-run)
    figure "run: SIGTERM mid-file to exit: $took s (grace $GRACE_S s), exit code $code"
    [ "$code" = 143 ] || { pm logs lfci-run; fail "run exited $code on SIGTERM, not 143 (stopped by SIGTERM)"; }
    pm logs lfci-run 2>&1 | grep -q "nothing was written" ||
        { pm logs lfci-run 2>&1 | tail -20; fail "the stopped run did not say that nothing was written"; }
    pm rm lfci-run >/dev/null
    pm run --rm --no-healthcheck --network none -v lfci-data:/data --entrypoint python3 "$IMAGE" -c '
import pathlib, sys
left = [p.name for p in pathlib.Path("/data").glob("*stopped*")]
print("left at the output path:", left or "nothing")
sys.exit(bool(left))' || fail "the stopped run left a file behind"
}

check_serve_and_stop() {
    pm rm -f lfci-serve >/dev/null 2>&1 || true
    local start healthy=""
    start=$(now)
    # As Kubernetes runs it (read-only root, no capabilities) and with no network at all: the
    # HEALTHCHECK runs inside the container, on its own loopback.
    pm run -d --name lfci-serve --network none --read-only --cap-drop ALL --security-opt no-new-privileges \
        --shm-size=1g -v lfci-data:/data "$IMAGE" >/dev/null
    for _ in $(seq 1 120); do
        if pm healthcheck run lfci-serve >/dev/null 2>&1; then
            healthy=$(since "$start")
            break
        fi
        [ "$(pm inspect --format '{{.State.Running}}' lfci-serve)" = true ] || break
        sleep 0.5
    done
    [ -n "$healthy" ] || { pm logs lfci-serve; fail "serve never became healthy"; }
    figure "serve: start-up to healthy: $healthy s"
    local health
    health=$(pm exec lfci-serve python3 -c \
        'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8080/healthz").read().decode())')
    say "/healthz: $health"
    grep -q '"status": "ok"' <<<"$health" || fail "/healthz said $health"

    start=$(now)
    pm stop -t "$GRACE_S" lfci-serve >/dev/null
    local took code
    took=$(since "$start")
    code=$(pm inspect --format '{{.State.ExitCode}}' lfci-serve)
    figure "serve: SIGTERM to exit: $took s (grace $GRACE_S s), exit code $code"
    pm logs lfci-serve 2>&1 | grep -q "livefuse serve: stopping" || fail "serve did not shut down on SIGTERM"
    [ "$code" = 0 ] || fail "serve exited $code on SIGTERM (137 means it was killed after the grace period)"
    python3 -c "import sys; sys.exit(float(sys.argv[1]) >= float(sys.argv[2]))" "$took" "$GRACE_S" \
        || fail "serve took the whole grace period to stop"
    pm rm lfci-serve >/dev/null
}

cleanup() {
    if [ "${KEEP_IMAGES:-0}" != 1 ]; then
        pm rm -f lfci-serve lfci-run >/dev/null 2>&1 || true
        pm volume rm -f lfci-data >/dev/null 2>&1 || true
        pm system reset --force >/dev/null 2>&1 || true
        rm -rf "$WORK/storage" "$WORK/run" "$WORK/root-owned"
    fi
}

install_tools
configure_podman
trap cleanup EXIT
lint
stand_in_base
build
check_user_and_doctor
check_pull_and_demo
check_run_stops_on_sigterm
check_serve_and_stop
say "all image checks passed"
cat "$FIGURES"
