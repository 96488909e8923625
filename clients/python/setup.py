"""Build script: compiles protos/NAME.proto into the descriptor set fastserve_client/_proto/NAME.pb.

fastserve_client.protos builds the message classes from these at import time, so they work
with any protobuf runtime version and need no generated Python code.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


class build_py_with_protos(build_py):
    def run(self):
        from importlib.resources import files

        from grpc_tools import protoc

        well_known = files("grpc_tools") / "_proto"  # google/protobuf/*.proto
        out = HERE / "fastserve_client" / "_proto"
        out.mkdir(exist_ok=True)
        for proto in sorted((HERE / "protos").glob("*.proto")):
            args = ["protoc", f"-I{HERE / 'protos'}", f"-I{well_known}", "--include_imports",
                    f"--descriptor_set_out={out / proto.stem}.pb", str(proto)]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {proto}")
        super().run()


setup(cmdclass={"build_py": build_py_with_protos})
