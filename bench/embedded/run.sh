#!/usr/bin/env bash
# Aggregate tokens/s with 8 concurrent agent conversations (4 turns each): offswitch's embedded
# backend against llama.cpp's OpenAI-compatible server (llama-cpp-python), same GGUF, 2 threads.
# Usage: bench/embedded/run.sh [--conversations N] [--turns N] [--max-tokens N]
set -euo pipefail
cd "$(dirname "$0")/../.."

models_dir="${OFFSWITCH_HOME:+$OFFSWITCH_HOME/models}"
models_dir="${models_dir:-$HOME/.cache/offswitch/models}"
model="$models_dir/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
    cargo run -q -p offswitch-cli -- models pull smollm2-135m
fi

# llama-cpp-python compiles llama.cpp from source (~10 minutes on 2 cores) and needs cmake.
if ! python3 -c "import llama_cpp.server" 2>/dev/null; then
    python3 -m pip install cmake
    python3 -m pip install 'llama-cpp-python[server]==0.3.36'
fi

port="${LLAMA_PORT:-18765}"
python3 -m llama_cpp.server --model "$model" --n_threads 2 --n_threads_batch 2 \
    --n_ctx 16384 --host 127.0.0.1 --port "$port" >/tmp/offswitch-bench-llama.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    if curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null; then break; fi
    sleep 1
done
curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null || {
    echo "llama.cpp server did not start; see /tmp/offswitch-bench-llama.log" >&2
    exit 1
}

cargo bench -q -p offswitch-embedded --bench agents -- --llama-url "http://127.0.0.1:$port/v1" "$@"
