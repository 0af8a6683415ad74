#!/usr/bin/env python3
"""A small agent written with the OpenAI Agents SDK (`openai-agents`), for `offswitch guard`.

It is a third-party agent program as an operator would run one: an `Agent` with instructions
and two function tools, a chat-completions model at a base URL (the embedded model that
`offswitch serve-model` serves, forwarded into the sandbox by the policy), run by the SDK's
`Runner` for a bounded number of turns. What the model makes of the task does not matter (the
embedded model is tiny); every turn is a real request through the SDK to the endpoint.

    python3 openai_agents_sdk.py --base-url http://127.0.0.1:8000/v1 [--keep-alive [--mark TEXT]]

With `--keep-alive` the agent starts a detached `sleep` and keeps asking the model in a loop
until it is killed: the case an operator's `offswitch guard stop` must end. `--mark` puts TEXT in
the helper's environment (`AGENT_MARK`), so a test can find every process of the agent from
outside the sandbox and see that none is left.
"""

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

# Before the SDK is imported: the trace exporter must never try to reach the internet.
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"

from agents import (  # noqa: E402
    Agent,
    AgentsException,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RunHooks,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI  # noqa: E402

INSTRUCTIONS = (
    "You are a careful assistant working in a small project directory. "
    "Use list_files to see the project, then write_note to leave a one-line summary. "
    "Answer briefly."
)
TASK = "Look at the project and leave a short note about what is in it."


@function_tool
def list_files() -> str:
    """List the files in the project directory."""
    return "\n".join(sorted(path.name for path in Path.cwd().iterdir())) or "(empty)"


@function_tool
def write_note(text: str) -> str:
    """Write a one-line note to notes.txt in the project directory.

    Args:
        text: The note.
    """
    Path("notes.txt").write_text(text.strip()[:500] + "\n")
    return "written to notes.txt"


class CountRequests(RunHooks):
    """Counts the model requests that returned, so the output says how many went through."""

    def __init__(self) -> None:
        self.requests = 0

    async def on_llm_end(self, context, agent, response) -> None:
        self.requests += 1


async def run_once(agent: Agent, hooks: CountRequests, max_turns: int) -> None:
    try:
        result = await Runner.run(agent, TASK, max_turns=max_turns, hooks=hooks)
        print(f"final output: {str(result.final_output).strip()[:200]!r}", flush=True)
    except AgentsException as error:
        # A tiny model may call a tool badly or never finish within the turns: the run was
        # still real, which is all this agent is for.
        print(f"run ended early: {type(error).__name__}: {error}", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--keep-alive", action="store_true")
    parser.add_argument("--mark", default="")
    args = parser.parse_args()

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=120)
    agent = Agent(
        name="project-assistant",
        instructions=INSTRUCTIONS,
        tools=[list_files, write_note],
        model=OpenAIChatCompletionsModel(model=args.model, openai_client=client),
        model_settings=ModelSettings(max_tokens=args.max_tokens, temperature=0.0),
    )
    hooks = CountRequests()
    await run_once(agent, hooks, args.max_turns)
    print(f"model requests: {hooks.requests}", flush=True)
    if args.keep_alive:
        # A helper in a session of its own, as agents leave behind: it outlives the agent
        # unless the whole sandbox is killed.
        helper = subprocess.Popen(
            ["sleep", "600"], start_new_session=True, env={**os.environ, "AGENT_MARK": args.mark}
        )
        print(f"keeping alive with helper pid {helper.pid}", flush=True)
        while True:
            await run_once(agent, hooks, 1)
            print(f"model requests: {hooks.requests}", flush=True)
            await asyncio.sleep(1)
    # Closed before exiting, so the forwarded connection ends while the agent is still running.
    await client.close()
    return 0 if hooks.requests > 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
