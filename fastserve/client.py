"""The Python client, as `fastserve.client` has always offered it: it lives in its own
distribution, fastserve-client (clients/python), which the server depends on."""
from fastserve_client import AsyncClient, Client, ServingError

__all__ = ["AsyncClient", "Client", "ServingError"]
