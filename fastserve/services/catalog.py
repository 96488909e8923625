"""Every gRPC service fastserve serves, as the one method table the transports drive.

A transport needs `grpc_methods()`, `registry` (metrics labels) and `pipeline` (where
inference calls go); the kinds of entries are in services/methods.py. Reflection is added
here: it describes the others, from a descriptor pool that holds their definitions.
"""
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

from fastserve.services.methods import Streamed
from fastserve.services.reflection import METHOD as REFLECTION, Reflection
from fastserve_client import protos


class Services:
    def __init__(self, registry, pipeline, *services):
        self.registry = registry
        self.pipeline = pipeline
        self._services = services
        self._reflection = Reflection(self.service_names, self.reflection_pool)

    def grpc_methods(self) -> dict:
        methods = {}
        for service in self._services:
            methods.update(service.grpc_methods())
        methods[REFLECTION] = Streamed(reflection_pb2.ServerReflectionRequest, self._reflection.answer)
        return methods

    def service_names(self) -> list[str]:
        return sorted({path.strip("/").split("/")[0] for path in self.grpc_methods()})

    def reflection_pool(self) -> descriptor_pool.DescriptorPool:
        """A pool with the definitions of every served service, for gRPC reflection."""
        pool = descriptor_pool.DescriptorPool()
        added = set()

        def add(file_descriptor):
            if file_descriptor.name in added:
                return
            for dependency in file_descriptor.dependencies:
                add(dependency)
            proto = descriptor_pb2.FileDescriptorProto()
            file_descriptor.CopyToProto(proto)
            pool.Add(proto)
            added.add(file_descriptor.name)

        for module in (prediction_service_pb2, model_service_pb2, health_pb2, reflection_pb2):
            add(module.DESCRIPTOR)
        add(protos.inference().ModelInferRequest.DESCRIPTOR.file)
        return pool
