"""gRPC server reflection (grpc.reflection.v1alpha): lets grpcurl-style tools list the
services and fetch their definitions. A bidirectional stream answered message by message;
the catalog puts it in the method table like every other method, so both gRPC transports
serve it and token authentication applies to it.
"""
from collections.abc import Callable

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import StatusCode
from grpc_reflection.v1alpha import reflection_pb2

SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"
METHOD = f"/{SERVICE_NAME}/ServerReflectionInfo"


class Reflection:
    def __init__(self, service_names: Callable[[], list[str]], pool: Callable[[], descriptor_pool.DescriptorPool]):
        self._service_names = service_names
        self._pool = pool  # built on the first request (it copies every served definition)
        self._built: descriptor_pool.DescriptorPool | None = None

    def answer(self, request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
        response = reflection_pb2.ServerReflectionResponse(valid_host=request.host, original_request=request)
        kind = request.WhichOneof("message_request")
        pool = self._built = self._built or self._pool()
        try:
            if kind == "list_services":
                names = [*self._service_names(), SERVICE_NAME]
                response.list_services_response.service.extend(
                    reflection_pb2.ServiceResponse(name=name) for name in sorted(set(names)))
            elif kind == "file_by_filename":
                self._files(response, pool.FindFileByName(request.file_by_filename))
            elif kind == "file_containing_symbol":
                self._files(response, pool.FindFileContainingSymbol(request.file_containing_symbol))
            elif kind == "file_containing_extension":
                extension = request.file_containing_extension
                message = pool.FindMessageTypeByName(extension.containing_type)
                self._files(response, pool.FindExtensionByNumber(message, extension.extension_number).file)  # type: ignore[attr-defined]  # not in types-protobuf
            elif kind == "all_extension_numbers_of_type":
                message = pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                response.all_extension_numbers_response.base_type_name = message.full_name
                response.all_extension_numbers_response.extension_number.extend(
                    sorted(e.number for e in pool.FindAllExtensions(message)))
            else:
                self._error(response, StatusCode.INVALID_ARGUMENT, "the request asks for nothing")
        except KeyError as exc:  # the pool has no such file, symbol or extension
            self._error(response, StatusCode.NOT_FOUND, f"not found: {exc.args[0] if exc.args else ''}")
        return response

    @staticmethod
    def _files(response, file_descriptor) -> None:
        """The file and every file it depends on, as grpc's own reflection answers."""
        seen, queue = set(), [file_descriptor]
        while queue:
            file = queue.pop()
            if file.name in seen:
                continue
            seen.add(file.name)
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            response.file_descriptor_response.file_descriptor_proto.append(proto.SerializeToString())
            queue.extend(file.dependencies)

    @staticmethod
    def _error(response, code: StatusCode, message: str) -> None:
        response.error_response.error_code = code.value[0]
        response.error_response.error_message = message
