"""Mutual TLS and bearer tokens on both gRPC transports (the token travels as call metadata)."""
import grpc
import pytest

from tests.conftest import EXAMPLES
from tests.test_e2e_grpc_transports import TRANSPORTS
from tests.test_e2e_security import TOKEN, pki, predict, secure_channel  # noqa: F401 - pki is a fixture


@pytest.fixture(scope="module", params=TRANSPORTS)
def server(request, start_server, pki, tmp_path_factory):  # noqa: F811 - pki: the imported fixture
    socket_path = tmp_path_factory.mktemp("socket") / "grpc.sock"
    server = start_server(
        [
            f"--config={EXAMPLES / 'models.yaml'}", f"--grpc_transport={request.param}",
            f"--ssl_config_file={pki['ssl_config'](True)}", f"--auth_token_file={pki['token_file']}",
            f"--grpc_socket_path={socket_path}",
        ],
        rest=False,
    )
    server.socket_path = socket_path
    return server


def test_client_certificate_and_token(server, pki):  # noqa: F811 - pki: the imported fixture
    with secure_channel(server, pki, "client") as channel:
        assert predict(channel, TOKEN) == [[3.0]]
        for token, text in ((None, "missing bearer token"), ("wrong", "invalid bearer token")):
            with pytest.raises(grpc.RpcError) as err:
                predict(channel, token)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert text in err.value.details()


@pytest.mark.parametrize("client", [None, "rogue"])
def test_client_certificate_missing_or_from_another_ca_is_refused(server, pki, client):  # noqa: F811 - pki: the imported fixture
    with secure_channel(server, pki, client) as channel:
        with pytest.raises(grpc.RpcError) as err:
            predict(channel, TOKEN)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_unix_socket_is_plain_and_still_needs_the_token(server):
    with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
        assert predict(channel, TOKEN) == [[3.0]]
        with pytest.raises(grpc.RpcError) as err:
            predict(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
