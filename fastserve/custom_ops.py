"""Custom TensorFlow ops without rebuilding anything: load op libraries and import the
Python packages that register ops (server.custom_op_libraries, server.import_modules).

Both run once, before any model loads: a SavedModel whose graph uses an op TensorFlow
does not know fails its load with "Op type not registered 'NAME'".
"""
import importlib
import logging

import tensorflow as tf

from fastserve.config import ConfigError, ServerConfig

log = logging.getLogger(__name__)


def register(config: ServerConfig) -> None:
    """Load every configured op library and module; ConfigError names the one that fails."""
    for path in config.custom_op_libraries:
        try:
            tf.load_op_library(path)
        except Exception as exc:  # NotFoundError, or the loader's error for a library built for another TensorFlow
            raise ConfigError(f"server.custom_op_libraries: cannot load {path}: {exc}") from None
        log.info("loaded custom op library %s", path)
    for name in config.import_modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or whatever the module raises while it registers its ops
            raise ConfigError(f"server.import_modules: cannot import {name}: {type(exc).__name__}: {exc}") from None
        log.info("imported module %s", name)
