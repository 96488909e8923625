"""TF Serving's text-proto config files, read in one place: message classes for the config
protos the tensorflow-serving-api pip package does not ship (SSLConfig, MonitoringConfig,
BatchingParameters), so their text format parses exactly as TF Serving parses it, and the
reading and parsing of a file, with errors that name it.
"""
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_FIELD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _FIELD.TYPE_STRING, "bool": _FIELD.TYPE_BOOL, "int64": _FIELD.TYPE_INT64}
_WRAPPERS = "google.protobuf."  # a field of a wrapper type: google.protobuf.Int64Value, ...


def message_classes(file_name: str, package: str, messages: dict[str, list[tuple[int, str, str]]]) -> dict[str, type]:
    """{message name: class} for `messages`: {name: [(number, field name, type)]}, where a
    type is "string", "bool", "int64", a wrapper ("google.protobuf.Int64Value") or the name of
    another message in `messages`, optionally after "repeated "."""
    file = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3",
                                              dependency=["google/protobuf/wrappers.proto"])
    for name, message_fields in messages.items():
        message = file.message_type.add(name=name)
        for number, field_name, kind in message_fields:
            label = _FIELD.LABEL_REPEATED if kind.startswith("repeated ") else _FIELD.LABEL_OPTIONAL
            kind = kind.removeprefix("repeated ")
            if kind in _SCALARS:
                message.field.add(name=field_name, number=number, type=_SCALARS[kind], label=label)
            else:
                type_name = f".{kind}" if kind.startswith(_WRAPPERS) else f".{package}.{kind}"
                message.field.add(name=field_name, number=number, type=_FIELD.TYPE_MESSAGE, type_name=type_name, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name in messages}


def read(path: str, what: str, error: type[Exception]) -> str:
    """A config file's text; one that cannot be read raises `error` naming it."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None


def parse(text: str, message, where: str, error: type[Exception]):
    """`message` with `text` (TF Serving's text format) parsed into it; invalid text raises
    `error` naming where it came from and the message type."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise error(f"{where}: invalid {message.DESCRIPTOR.name} text proto: {exc}") from None
    return message
