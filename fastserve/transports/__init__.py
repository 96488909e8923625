"""Transports: bytes <-> messages, connections, TLS, deadlines and cancellation (gRPC native and
grpc.aio, HTTP/1.1 with the REST app)."""
