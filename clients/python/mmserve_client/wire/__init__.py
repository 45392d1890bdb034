"""Request building and response parsing, shared by the sync and asyncio clients."""
