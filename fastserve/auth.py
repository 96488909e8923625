"""Bearer-token authentication: one check for every transport.

With a token configured, every request must carry `authorization: Bearer <token>`
(an HTTP header, or gRPC metadata). The admin surface (model config reloads, V2
repository load/unload, shared memory regions) can require a separate admin token. Health checks stay open
so load balancers and Kubernetes probes work without credentials.
"""
import hmac

from grpc import StatusCode

from fastserve import metrics
from fastserve.errors import ServingError

ADMIN_GRPC_METHODS = frozenset({
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    "/inference.GRPCInferenceService/RepositoryIndex",
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/inference.GRPCInferenceService/SystemSharedMemoryStatus",
    "/inference.GRPCInferenceService/SystemSharedMemoryRegister",
    "/inference.GRPCInferenceService/SystemSharedMemoryUnregister",
    "/inference.GRPCInferenceService/CudaSharedMemoryStatus",
    "/inference.GRPCInferenceService/CudaSharedMemoryRegister",
    "/inference.GRPCInferenceService/CudaSharedMemoryUnregister",
})
OPEN_GRPC_SERVICES = ("/grpc.health.v1.Health/",)
ADMIN_REST_PREFIXES = ("/v2/repository", "/v2/systemsharedmemory", "/v2/cudasharedmemory")
OPEN_REST_PREFIXES = ("/v2/health/",)


class TokenAuth:
    def __init__(self, token: str = "", admin_token: str = ""):
        self._token = token.encode()
        self._admin_token = admin_token.encode()
        self.enabled = bool(token or admin_token)

    def check(self, authorization: str | None, admin: bool) -> None:
        """Raise UNAUTHENTICATED unless `authorization` carries a token valid for this surface."""
        if admin:
            accepted: tuple[bytes, ...] = (self._admin_token or self._token,)
        else:
            accepted = (self._token, self._admin_token) if self._token else ()
        accepted = tuple(t for t in accepted if t)
        if not accepted:
            return  # no token is configured for this surface
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            metrics.rejected("unauthenticated")
            raise ServingError(StatusCode.UNAUTHENTICATED, "missing bearer token: send the header 'authorization: Bearer <token>'")
        presented_bytes = presented.strip().encode()
        if not any(hmac.compare_digest(presented_bytes, t) for t in accepted):
            metrics.rejected("unauthenticated")
            what = "admin token" if admin and self._admin_token else "token"
            raise ServingError(StatusCode.UNAUTHENTICATED, f"invalid bearer token: this operation needs the {what}")

    # which surface a call belongs to

    @staticmethod
    def grpc_surface(method: str) -> str:
        if method.startswith(OPEN_GRPC_SERVICES):
            return "open"
        return "admin" if method in ADMIN_GRPC_METHODS else "data"

    @staticmethod
    def rest_surface(path: str) -> str:
        if path.startswith(OPEN_REST_PREFIXES):
            return "open"
        return "admin" if path.startswith(ADMIN_REST_PREFIXES) else "data"
