# Sourced by run.sh and ab.sh: what both need, so that they measure the same thing.
#
# The servers a script starts go in `pids`, its scratch directory is `work`; `cleanup` (set as the
# EXIT trap) stops the one and removes the other.
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# The proxy configuration both benchmark: a tool-call rule, a prompt rule, a token budget with a
# window.
#
#   proxy_config FILE LISTEN_ADDR UPSTREAM_URL TOKEN_FILE
proxy_config() {
    cat >"$1" <<TOML
version = 1
listen = "$2"
[[upstream]]
name = "mock"
url = "$3"
api = "openai"
[[session]]
name = "bench"
token_file = "$4"
[[rule]]
name = "no-force-delete"
on = "tool_call"
tool = "*shell*"
pattern = 'rm\s+-[a-zA-Z]*[rR]'
action = "block"
[[rule]]
name = "key-leaving"
on = "prompt"
pattern = '(sk-live-[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})'
action = "block"
[[budget]]
name = "tokens"
metric = "tokens"
max = 1000000000000
per = "1h"
[limits]
max_concurrent = 1000
TOML
}
