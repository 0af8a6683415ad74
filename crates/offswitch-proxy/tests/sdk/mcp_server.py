"""An MCP server written with the official Python SDK (`mcp` from PyPI), on the Streamable HTTP
transport: a `run` tool that only says what it would run, and a `read_secret` tool whose result
holds an access key. Usage: mcp_server.py PORT
"""
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("workbench")


@server.tool()
def run(command: str) -> str:
    """Run a shell command (this one only says what it would run)."""
    return f"would run: {command}"


@server.tool()
def read_secret(name: str) -> str:
    """Read a named secret."""
    return f"{name} = AKIAABCDEFGHIJKLMNOP"


server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
