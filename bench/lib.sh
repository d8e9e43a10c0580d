# Shared by bench/compare and bench/breakdown (sourced, not run): each
# prepares what a run needs, idempotently, and says what it could not.
# The sourcing script sets `set -euo pipefail`, cds to the repository and
# defines log().

# The Python environment: .venv (scripts/python-env) plus bench/requirements.txt,
# installed again only when that file changes.
bench_python_env() {
  scripts/python-env
  local requirements=bench/requirements.txt
  local stamp=.venv/.bench-requirements.sha256
  local want
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "installing $requirements into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --requirement "$requirements"
    echo "$want" >"$stamp"
  fi
}

# bench_debian_tool COMMAND PACKAGE: installs Debian's PACKAGE when COMMAND is
# missing and this is root with apt-get (an update only when the install
# fails on a stale list). Returns 1, having said so, when it stays missing.
bench_debian_tool() {
  local command="$1" package="$2"
  command -v "$command" >/dev/null && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing $command (Debian $package)"
    apt-get install -y -qq "$package" >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq "$package" >/dev/null; } || true
  fi
  if ! command -v "$command" >/dev/null; then
    log "$command is missing and cannot be installed here (Debian $package; needs root and apt-get)"
    return 1
  fi
}
