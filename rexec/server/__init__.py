"""The other end: the asyncio server."""
