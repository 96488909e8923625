"""A REST request and its response as the services see them; the HTTP transport
(transports/http.py) reads the one from the wire and writes the other."""
from dataclasses import dataclass


@dataclass
class Request:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
