"""modelport's protos against tritonclient's own: same names, numbers and types.

modelport writes its .proto files from the public spec; this checks, field by field,
that every message, enum and RPC it declares decodes as Triton's clients encode it.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from modelport.protos import grpc_service_pb2, model_config_pb2

pytestmark = pytest.mark.timeout(20)

PAIRS = [
    (grpc_service_pb2.DESCRIPTOR, triton_service.DESCRIPTOR),
    (model_config_pb2.DESCRIPTOR, triton_config.DESCRIPTOR),
]


def messages(file: FileDescriptor) -> list[Descriptor]:
    found: list[Descriptor] = []

    def walk(message: Descriptor) -> None:
        found.append(message)
        for nested in message.nested_types:
            walk(nested)

    for message in file.message_types_by_name.values():
        walk(message)
    return found


def enums(file: FileDescriptor) -> list[EnumDescriptor]:
    found = list(file.enum_types_by_name.values())
    for message in messages(file):
        found.extend(message.enum_types)
    return found


def test_both_files_are_package_inference() -> None:
    for ours, theirs in PAIRS:
        assert ours.package == theirs.package == "inference"


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["grpc_service", "model_config"])
def test_every_field_matches_tritonclients(ours: FileDescriptor, theirs: FileDescriptor) -> None:
    checked = 0
    for message in messages(ours):
        other = theirs.pool.FindMessageTypeByName(message.full_name)
        assert message.GetOptions().map_entry == other.GetOptions().map_entry, message.full_name
        for field in message.fields:
            twin = other.fields_by_number.get(field.number)
            where = f"{message.full_name}.{field.name} = {field.number}"
            assert twin is not None, f"{where}: tritonclient has no field {field.number}"
            assert twin.name == field.name, where
            assert twin.type == field.type, where
            assert twin.is_repeated == field.is_repeated, where
            if field.message_type is not None:
                assert twin.message_type.full_name == field.message_type.full_name, where
            if field.enum_type is not None:
                assert twin.enum_type.full_name == field.enum_type.full_name, where
            ours_oneof = field.containing_oneof.name if field.containing_oneof else None
            theirs_oneof = twin.containing_oneof.name if twin.containing_oneof else None
            assert ours_oneof == theirs_oneof, where
            checked += 1
    assert checked > 20


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["grpc_service", "model_config"])
def test_every_enum_value_matches(ours: FileDescriptor, theirs: FileDescriptor) -> None:
    for enum in enums(ours):
        other = theirs.pool.FindEnumTypeByName(enum.full_name)
        assert {v.name: v.number for v in enum.values} == {
            v.name: v.number for v in other.values if v.name in enum.values_by_name
        }
        assert set(enum.values_by_name) <= set(other.values_by_name)


def test_every_rpc_matches() -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    expected = {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
        "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
    }  # fmt: skip
    assert set(ours.methods_by_name) == expected
    for method in ours.methods:
        twin = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == twin.input_type.full_name
        assert method.output_type.full_name == twin.output_type.full_name
        assert method.client_streaming == twin.client_streaming
        assert method.server_streaming == twin.server_streaming


def test_messages_cross_decode() -> None:
    """One process holds both sets of descriptors (ours are in a pool of their own)."""
    ours = grpc_service_pb2.ModelInferRequest(model_name="m", id="7")
    item = ours.inputs.add(name="x", datatype="INT64", shape=[2])
    item.contents.int64_contents.extend([1, -2])
    ours.parameters["flag"].bool_param = True
    theirs = triton_service.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.inputs[0].contents.int64_contents == [1, -2]
    assert theirs.parameters["flag"].bool_param
    back = grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert back == ours
