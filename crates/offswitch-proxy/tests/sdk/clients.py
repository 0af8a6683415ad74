"""The official OpenAI and Anthropic Python SDKs as clients of offswitch's proxy.

Usage: clients.py BASE_URL TOKEN CASE. Prints one JSON object: what the SDK gave back.
"""
import json
import sys

base, token, case = sys.argv[1], sys.argv[2], sys.argv[3]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "shell",
        "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}]
MESSAGES = [{"role": "user", "content": "Clean up the build directory."}]


def openai_client():
    import openai
    return openai.OpenAI(base_url=base, api_key=token, max_retries=0)


def anthropic_client():
    import anthropic
    # The Anthropic SDK appends /v1/messages to its base URL.
    return anthropic.Anthropic(base_url=base.removesuffix("/v1"), api_key=token, max_retries=0)


def chat_stream(client):
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS, stream=True):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"name": "", "arguments": ""})
                if call.function and call.function.name:
                    slot["name"] += call.function.name
                if call.function and call.function.arguments:
                    slot["arguments"] += call.function.arguments
            finish = choice.finish_reason or finish
    return {"content": content, "calls": [calls[i] for i in sorted(calls)], "finish_reason": finish}


def run():
    if case == "openai_chat_whole":
        raw = openai_client().chat.completions.with_raw_response.create(model="m", messages=MESSAGES, tools=TOOLS)
        completion = raw.parse()
        call = completion.choices[0].message.tool_calls[0]
        return {"raw": raw.http_response.text, "name": call.function.name, "arguments": call.function.arguments}
    if case in ("openai_chat_stream", "openai_chat_stream_blocked"):
        return chat_stream(openai_client())
    if case == "openai_responses_stream_blocked":
        types, final = [], None
        for event in openai_client().responses.create(model="m", input="Clean up.", stream=True):
            types.append(event.type)
            if event.type == "response.completed":
                final = event.response
        return {"types": types, "output_types": [item.type for item in final.output], "text": final.output_text}
    if case == "openai_prompt_refused":
        import openai
        try:
            openai_client().chat.completions.create(model="m", messages=[{"role": "user", "content": "the key is sk-live-ABCDEFGHIJKLMNOP"}])
        except openai.PermissionDeniedError as error:
            return {"status": error.status_code, "message": error.message}
        return {"status": None}
    if case == "anthropic_whole":
        raw = anthropic_client().messages.with_raw_response.create(model="claude", max_tokens=100, messages=MESSAGES)
        message = raw.parse()
        return {"raw": raw.http_response.text, "types": [block.type for block in message.content]}
    if case in ("anthropic_stream", "anthropic_stream_blocked"):
        with anthropic_client().messages.stream(model="claude", max_tokens=100, messages=MESSAGES) as stream:
            message = stream.get_final_message()
        return {
            "types": [block.type for block in message.content],
            "inputs": [block.input for block in message.content if block.type == "tool_use"],
            "texts": [block.text for block in message.content if block.type == "text"],
            "stop_reason": message.stop_reason,
        }
    raise SystemExit(f"unknown case {case}")


print(json.dumps(run()))
