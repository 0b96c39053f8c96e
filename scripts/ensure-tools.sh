#!/usr/bin/env bash
# Make the system tools some tests use available, when this machine allows it.
#   ensure-tools.sh promtool wscat chromium docker node
# As root with apt-get / npm present, a missing tool is installed. Otherwise the script names
# what to install and returns 0: the tests that need the tool skip with the same message
# (and fail under CI=true, where a skipped tier is not acceptable).
set -uo pipefail

LLMSTREAM_HOME="${LLMSTREAM_HOME:-$HOME/.cache/llmstream}"
is_root() { [[ $(id -u) -eq 0 ]]; }
apt_updated=0

apt_install() {
  if ! is_root || ! command -v apt-get >/dev/null; then
    echo "!! $1 is missing: install the Debian package(s) '${*:2}' (apt-get install ${*:2})"
    return 0
  fi
  if ((apt_updated == 0)); then
    echo ">> apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
    apt_updated=1
  fi
  echo ">> installing ${*:2} (for $1)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${@:2}" >/dev/null \
    || echo "!! apt-get install ${*:2} failed; tests needing $1 will skip"
}

for tool in "$@"; do
  case "$tool" in
    node)
      # The real node of the cluster tier: its own containerd (never dockerd's), runc, the CNI
      # plugins, iptables for kube-proxy and portmap, gcc for the pause binary, and a static
      # busybox for the tier's test pods.
      { command -v containerd >/dev/null && command -v runc >/dev/null \
          && command -v iptables >/dev/null && command -v gcc >/dev/null \
          && [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/portmap && -x /bin/busybox ]]; } \
        || apt_install "the real node" containerd runc containernetworking-plugins iptables \
             gcc libc6-dev busybox-static ;;
    promtool)
      command -v promtool >/dev/null || apt_install promtool prometheus ;;
    chromium)
      { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } \
        || apt_install chromium chromium chromium-driver ;;
    wscat)
      if ! command -v wscat >/dev/null && [[ ! -x $LLMSTREAM_HOME/npm/node_modules/.bin/wscat ]]; then
        if command -v npm >/dev/null; then
          echo ">> installing wscat@6 into $LLMSTREAM_HOME/npm"
          npm install --silent --no-fund --no-audit --prefix "$LLMSTREAM_HOME/npm" wscat@6 >/dev/null 2>&1 \
            || echo "!! npm install wscat@6 failed; tests needing wscat will skip"
        else
          echo "!! wscat is missing: install Node.js + npm, then 'npm install -g wscat@6'"
        fi
      fi ;;
    docker)
      # The image tests need a running engine; debootstrap builds the base image where no
      # registry is reachable. A dockerd started here keeps running after the tests.
      command -v dockerd >/dev/null || apt_install docker docker.io
      command -v debootstrap >/dev/null || apt_install debootstrap debootstrap
      if command -v dockerd >/dev/null && ! /usr/bin/docker info >/dev/null 2>&1; then
        if is_root; then
          mkdir -p "$LLMSTREAM_HOME"
          echo ">> starting dockerd (log: $LLMSTREAM_HOME/dockerd.log)"
          nohup dockerd >"$LLMSTREAM_HOME/dockerd.log" 2>&1 </dev/null &
          for _ in $(seq 60); do /usr/bin/docker info >/dev/null 2>&1 && break; sleep 1; done
          /usr/bin/docker info >/dev/null 2>&1 || echo "!! dockerd did not come up; see $LLMSTREAM_HOME/dockerd.log"
        else
          echo "!! no Docker engine runs: start dockerd (as root) to run the image tests"
        fi
      fi ;;
    *) echo "ensure-tools: unknown tool '$tool'" >&2; exit 2 ;;
  esac
done
exit 0
