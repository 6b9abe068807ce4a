#!/usr/bin/env bash
# Fuzzes the API against its own OpenAPI document: builds the gateway, starts `ci-gateway dev`
# on a free loopback port, waits for /healthz, runs Schemathesis against /v1/openapi.json, and
# stops the gateway. Exits non-zero on any Schemathesis failure. Per-operation limits (streams
# and long-polls on real runs) are in .ci/schemathesis.toml.
#
# Environment:
#   CI_GATEWAY_TOKEN       sent as `Authorization: Bearer ...`; defaults to the token dev prints.
#   CI_GATEWAY_BIN         an already built `ci-gateway` binary (default: build one).
#   SCHEMATHESIS_EXAMPLES  test cases per operation and phase (default 40).
#   SCHEMATHESIS_VENV      where to install Schemathesis (default /tmp/ci-gateway-schemathesis).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-/tmp/ci-gateway-schemathesis}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-40}

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

# CI passes the binary `cargo test` just built; building it again here would recompile many
# crates with other features.
BIN=${CI_GATEWAY_BIN:-}
if [[ -z "$BIN" ]]; then
    cargo build -p ci-gateway --bin ci-gateway --locked --quiet
    BIN=target/debug/ci-gateway
fi

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
LOG=$(mktemp)
"$BIN" dev --listen "127.0.0.1:$PORT" >"$LOG" 2>&1 &
GATEWAY_PID=$!
stop_gateway() {
    kill "$GATEWAY_PID" 2>/dev/null || true
    wait "$GATEWAY_PID" 2>/dev/null || true
    rm -f "$LOG"
}
trap stop_gateway EXIT

for _ in $(seq 1 120); do
    if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
        echo "ci-gateway dev exited:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 0.5
done
curl -fsS "$BASE/healthz" >/dev/null

# Dev mode prints a token with every scope; an explicit CI_GATEWAY_TOKEN wins.
TOKEN=${CI_GATEWAY_TOKEN:-$(sed -n 's/.*export CI_GATEWAY_TOKEN=//p' "$LOG" | head -n 1)}
AUTH=()
if [[ -n "$TOKEN" ]]; then
    AUTH=(-H "Authorization: Bearer $TOKEN")
fi

"$VENV/bin/schemathesis" --config-file .ci/schemathesis.toml run "$BASE/v1/openapi.json" \
    "${AUTH[@]}" \
    --checks not_a_server_error,status_code_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "$EXAMPLES" \
    --generation-database none \
    --no-color
