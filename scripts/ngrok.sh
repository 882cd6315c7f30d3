#!/usr/bin/env bash
# A public URL for the relay in development, in one command:
#   1. starts `ngrok http $PORT` in the background, unless a tunnel already answers on ngrok's
#      local API (then that tunnel is used);
#   2. reads the tunnel's https URL from $NGROK_API/api/tunnels;
#   3. writes PUBLIC_URL=<that URL> into .env (replacing the old line, keeping every other line;
#      the file is created when missing);
#   4. when TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER are set (environment or
#      .env), points that number's voice webhook at PUBLIC_URL/incoming-call (HTTP POST) through
#      the Twilio REST API.
#
# Usage: scripts/ngrok.sh        (from the project directory, where .env lives; then `make run`)
#
# Environment:
#   PORT                 the relay's local port (default 8000)
#   NGROK_API            ngrok's local agent API (default http://127.0.0.1:4040)
#   NGROK_WAIT           seconds to wait for a new tunnel to come up (default 20)
#   ENV_FILE             the file to update (default .env)
#   TWILIO_API_BASE_URL  the Twilio REST API (default https://api.twilio.com)
#   PYTHON               a Python 3 used to read JSON and edit .env (default python3)
set -euo pipefail

PORT=${PORT:-8000}
NGROK_API=${NGROK_API:-http://127.0.0.1:4040}
NGROK_API=${NGROK_API%/}
NGROK_WAIT=${NGROK_WAIT:-20}
ENV_FILE=${ENV_FILE:-.env}
PYTHON=${PYTHON:-python3}

say() { printf 'ngrok.sh: %s\n' "$*"; }
die() { printf 'ngrok.sh: %s\n' "$*" >&2; exit 1; }

command -v curl >/dev/null 2>&1 || die "curl is required (apt-get install curl)"
command -v "$PYTHON" >/dev/null 2>&1 || die "python3 is required to read ngrok's answer (or set PYTHON=/path/to/python3)"

# The value of a setting: the environment first, else the last NAME=value line of .env (optional
# `export`, quotes and trailing comment; names are case-insensitive, as in relay/config.py).
env_value() {
  local name=$1
  if [ -n "${!name:-}" ]; then
    printf '%s' "${!name}"
    return 0
  fi
  [ -f "$ENV_FILE" ] || return 0
  "$PYTHON" - "$ENV_FILE" "$name" <<'PY'
import re
import sys

path, name = sys.argv[1], sys.argv[2]
value = ""
with open(path, encoding="utf-8") as f:
    for line in f:
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", line)
        if not m or m.group(1).upper() != name.upper():
            continue
        raw = m.group(2)
        if len(raw) >= 2 and raw[0] in "\"'" and raw[-1] == raw[0]:
            value = raw[1:-1]
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0]
print(value, end="")
PY
}

# Replaces (or appends) NAME=VALUE in .env, keeping every other line and the file's mode.
set_env_value() {
  "$PYTHON" - "$ENV_FILE" "$1" "$2" <<'PY'
import os
import re
import shutil
import sys
import tempfile

path, name, value = sys.argv[1], sys.argv[2], sys.argv[3]
lines = []
if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
pattern = re.compile(r"\s*(?:export\s+)?" + re.escape(name) + r"\s*=", re.IGNORECASE)
out, written = [], False
for line in lines:
    if pattern.match(line):
        if not written:
            out.append(f"{name}={value}")
            written = True
        continue  # a duplicate line would be confusing: drop it
    out.append(line)
if not written:
    out.append(f"{name}={value}")
directory = os.path.dirname(os.path.abspath(path))
fd, tmp = tempfile.mkstemp(prefix=".env.", dir=directory)
with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write("\n".join(out) + "\n")
if os.path.exists(path):
    shutil.copymode(path, tmp)
os.replace(tmp, path)
PY
}

# The https URL and local address of the tunnel to our port (else of the first https tunnel),
# as "URL ADDR", from ngrok's /api/tunnels JSON on stdin; nothing when there is none.
pick_tunnel() {
  "$PYTHON" -c '
import json, sys
port = sys.argv[1]
try:
    tunnels = json.load(sys.stdin).get("tunnels") or []
except (ValueError, AttributeError):
    tunnels = []
https = [t for t in tunnels if str(t.get("public_url", "")).startswith("https://")]
def addr(t):
    return str((t.get("config") or {}).get("addr", ""))
ours = [t for t in https if addr(t).rstrip("/").endswith(":" + port)]
pick = ours or https
if pick:
    print(pick[0]["public_url"].rstrip("/"), addr(pick[0]) or "?")
' "$PORT"
}

tunnel() {
  local json
  json=$(curl -fsS --max-time 2 "$NGROK_API/api/tunnels" 2>/dev/null) || return 0
  printf '%s' "$json" | pick_tunnel
}

# --- 1-2. the tunnel ------------------------------------------------------------------------
found=$(tunnel)
if [ -n "$found" ]; then
  say "using the tunnel already running (ngrok API $NGROK_API)"
else
  if ! command -v ngrok >/dev/null 2>&1; then
    die "ngrok is not installed: install ngrok: https://ngrok.com/download (then run 'ngrok config add-authtoken <your token>' once)"
  fi
  log=$(mktemp "${TMPDIR:-/tmp}/ngrok.XXXXXX")
  nohup ngrok http "$PORT" --log=stdout --log-format=logfmt </dev/null >"$log" 2>&1 &
  pid=$!
  say "started ngrok for port $PORT (pid $pid, log $log)"
  deadline=$((SECONDS + NGROK_WAIT))
  while :; do
    found=$(tunnel)
    [ -n "$found" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      code=0
      wait "$pid" || code=$?
      {
        printf 'ngrok.sh: ngrok exited with status %s:\n' "$code"
        grep -iE 'err|fail|authtoken|authentication' "$log" || tail -n 20 "$log"
      } >&2
      if grep -qiE 'authtoken|authentication failed|ERR_NGROK_4018|ERR_NGROK_105' "$log"; then
        printf '%s\n' "ngrok.sh: ngrok is not authenticated: run 'ngrok config add-authtoken <token>' (token at https://dashboard.ngrok.com/get-started/your-authtoken)" >&2
      fi
      [ "$code" -ne 0 ] || code=1
      exit "$code"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill "$pid" 2>/dev/null || true
      die "ngrok started but no https tunnel appeared on $NGROK_API within ${NGROK_WAIT}s; see $log"
    fi
    sleep 0.2
  done
  say "ngrok keeps running in the background; stop it with: kill $pid"
fi
public_url=${found%% *}
addr=${found#* }
case "$addr" in
  *":$PORT") ;;
  *) say "warning: that tunnel forwards to $addr, not to port $PORT" >&2 ;;
esac
say "public URL: $public_url"

# --- 3. .env --------------------------------------------------------------------------------
set_env_value PUBLIC_URL "$public_url"
say "wrote PUBLIC_URL=$public_url to $ENV_FILE"
if [ -n "${PUBLIC_URL:-}" ] && [ "${PUBLIC_URL%/}" != "$public_url" ]; then
  say "warning: PUBLIC_URL=$PUBLIC_URL in your environment overrides $ENV_FILE; unset it" >&2
fi

# --- 4. the Twilio number's voice webhook ----------------------------------------------------
webhook="$public_url/incoming-call"
sid=$(env_value TWILIO_ACCOUNT_SID)
token=$(env_value TWILIO_AUTH_TOKEN)
number=$(env_value TWILIO_PHONE_NUMBER)
api=$(env_value TWILIO_API_BASE_URL)
api=${api:-https://api.twilio.com}
api=${api%/}
if [ -z "$sid" ] || [ -z "$token" ] || [ -z "$number" ]; then
  say "set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER to have the number pointed here;"
  say "otherwise set its voice webhook to $webhook (HTTP POST) in the Twilio console"
  say "restart the relay (make run) so it uses the new PUBLIC_URL"
  exit 0
fi

# The credentials go to curl on a file descriptor, not the command line (visible in `ps`).
curl_twilio() {
  curl -sS --max-time 15 -K <(printf 'user = "%s:%s"\n' "$sid" "$token") -w '\n%{http_code}' "$@"
}

numbers="$api/2010-04-01/Accounts/$sid/IncomingPhoneNumbers"
answer=$(curl_twilio -G "$numbers.json" --data-urlencode "PhoneNumber=$number") ||
  die "cannot reach the Twilio REST API at $api"
status=${answer##*$'\n'}
body=${answer%$'\n'*}
case "$status" in
  200) ;;
  401) die "Twilio rejected TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN (HTTP 401): check them in the Twilio console" ;;
  *) die "listing the account's phone numbers failed: HTTP $status $body" ;;
esac
number_sid=$(printf '%s' "$body" | "$PYTHON" -c '
import json, sys
wanted = sys.argv[1]
try:
    numbers = json.load(sys.stdin).get("incoming_phone_numbers") or []
except (ValueError, AttributeError):
    numbers = []
print(next((n.get("sid", "") for n in numbers if n.get("phone_number") == wanted), ""))
' "$number")
[ -n "$number_sid" ] || die "$number is not a phone number of account $sid: check TWILIO_PHONE_NUMBER (E.164, e.g. +15551234567)"

answer=$(curl_twilio -X POST "$numbers/$number_sid.json" \
  --data-urlencode "VoiceUrl=$webhook" --data-urlencode "VoiceMethod=POST") ||
  die "cannot reach the Twilio REST API at $api"
status=${answer##*$'\n'}
[ "$status" = 200 ] || die "updating $number's voice webhook failed: HTTP $status ${answer%$'\n'*}"
say "Twilio: $number → $webhook (POST)"
say "restart the relay (make run) so it uses the new PUBLIC_URL"
