"""fastserve's Python client: numpy in, numpy out, over gRPC, for the TF Serving API and
V2 (Open Inference Protocol), sync and asyncio, without TensorFlow. See fastserve_client.client."""
from fastserve_client.client import AsyncClient, Client, ServingError

__all__ = ["AsyncClient", "Client", "ServingError"]
