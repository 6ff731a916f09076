#!/usr/bin/env bash
# Debian packages the tests use: FluidSynth + a General MIDI soundfont (audio renditions) and
# Chromium (the web-page test, driven by Playwright with this system binary; no browser
# download). Installs only what is missing; needs root (CI runs as root).
set -euo pipefail
need=()
command -v fluidsynth >/dev/null || need+=(fluidsynth)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need+=(fluid-soundfont-gm)
command -v chromium >/dev/null || need+=(chromium)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "system_deps: please install ${need[*]} (Debian: apt-get install -y ${need[*]})" >&2
    exit 0
  fi
  echo "system_deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
