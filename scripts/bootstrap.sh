# Shared by ./run and ./run-tests: make .venv with the pinned requirements, and install
# missing Debian packages. Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: '$*' needs root; run it as root or install sudo" >&2; return 1; fi
}

APT_UPDATED=""
apt_install() {  # apt_install PACKAGE... : install the ones that are missing
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "error: missing system packages (${missing[*]}) and no apt-get to install them" >&2; return 1
  fi
  echo "installing system packages: ${missing[*]}" >&2
  [ -n "$APT_UPDATED" ] || { as_root apt-get update -qq; APT_UPDATED=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_node_packages() {  # ensure_node_packages DIR : DIR/node_modules as DIR/package-lock.json pins it
  local dir="$ROOT/$1" want
  command -v node >/dev/null || apt_install nodejs
  command -v npm >/dev/null || apt_install npm
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ "$(cat "$dir/node_modules/.installed" 2>/dev/null)" != "$want" ]; then
    echo "installing Node packages in $1" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" > "$dir/node_modules/.installed"
  fi
}

ensure_venv() {  # ensure_venv REQUIREMENTS_FILE : a venv with exactly these pins installed
  local requirements="$1" stamp="$VENV/.installed-${1%.txt}"  # one per file: ./run and ./run-tests do not undo each other
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      apt_install python3-venv
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  local want
  want="$(cat "$ROOT/requirements.txt" "$ROOT/$requirements" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing Python packages from $requirements" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/$requirements" >&2
    echo "$want" > "$stamp"
  fi
}
