"""Build script: compiles every Cython module under csrc/ into the fastserve package.

A module csrc/NAME.pyx becomes the extension fastserve._native.NAME.
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def native_extensions():
    sources = sorted((HERE / "csrc").glob("*.pyx"))
    if not sources:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    extensions = [
        Extension(
            f"fastserve._native.{src.stem}",
            [str(src.relative_to(HERE))],
            include_dirs=[numpy.get_include(), "csrc"],
            extra_compile_args=["-O3"],
        )
        for src in sources
    ]
    return cythonize(extensions, language_level=3, build_dir="build/cython")


def grpc_transport_extension():
    """The native gRPC transport, when libgrpc++ is installed (else the server uses grpc.aio)."""
    import shutil
    import subprocess

    from setuptools import Extension

    if not shutil.which("pkg-config") or subprocess.run(["pkg-config", "--exists", "grpc++"]).returncode != 0:
        print("libgrpc++ not found (pkg-config grpc++): building without the native gRPC transport")
        return []

    def pkg_config(flag):
        return subprocess.run(["pkg-config", flag, "grpc++"], check=True, capture_output=True, text=True).stdout.split()

    return [
        Extension(
            "fastserve._native.grpc_transport",
            ["csrc/grpc_transport.cc"],
            language="c++",
            extra_compile_args=["-std=c++17", "-O2", *pkg_config("--cflags")],
            extra_link_args=pkg_config("--libs"),
        )
    ]


setup(ext_modules=native_extensions() + grpc_transport_extension())
