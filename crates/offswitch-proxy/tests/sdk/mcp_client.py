"""An MCP client written with the official Python SDK, through offswitch's proxy: lists the
tools, then calls them. Usage: mcp_client.py URL TOKEN. Prints one JSON object.
"""
import asyncio
import json
import sys

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def text_of(result):
    return {
        "is_error": bool(result.is_error),
        "text": "".join(getattr(part, "text", "") for part in result.content),
    }


async def main():
    url, token = sys.argv[1], sys.argv[2]
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                tools = await session.list_tools()
                out = {"tools": sorted(tool.name for tool in tools.tools)}
                out["allowed"] = text_of(await session.call_tool("run", {"command": "ls -la"}))
                out["blocked"] = text_of(await session.call_tool("run", {"command": "rm -rf /"}))
                out["secret"] = text_of(await session.call_tool("read_secret", {"name": "aws"}))
    print(json.dumps(out))


asyncio.run(main())
