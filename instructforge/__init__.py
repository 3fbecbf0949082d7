"""InstructForge from Python: `from instructforge.client import Client` (see docs/client.md).

This package holds only the client: it imports httpx and pydantic, never the service or torch.
"""
