"""The one place that imports TensorFlow and Keras (slow: about 3.5 s), after quietening them."""

from __future__ import annotations

import logging
import os
import warnings

# TensorFlow reads these when it is imported; a value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

logging.getLogger("absl").setLevel(logging.ERROR)
tf.get_logger().setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module=r"keras(\..*)?$")
warnings.filterwarnings("ignore", module=r"tf_keras(\..*)?$")

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"gradcli needs the TensorFlow backend of Keras, but KERAS_BACKEND is "
        f"{keras.backend.backend()!r}"
    )


def tf_keras():
    """Import the Keras 2 line (package tf-keras) on demand, for models written by tf.keras 2."""
    import tf_keras as module

    return module


# ------------------------------------------------------------------ private modules
#
# The private TensorFlow and Keras modules gradcli relies on, each behind one accessor (ruff's
# TID251 bans importing tensorflow/keras/tf_keras anywhere else): the list to check when
# upgrading either.


def saved_model_pb2():
    """The SavedModel protobuf (read before TensorFlow loads a SavedModel: scanning)."""
    from tensorflow.core.protobuf import saved_model_pb2 as module

    return module


def variable_pb2():
    from tensorflow.core.framework import variable_pb2 as module

    return module


def op_def_registry():
    """TensorFlow's registered ops (a SavedModel's ops are checked against it)."""
    from tensorflow.python.framework import op_def_registry as module

    return module


def nested_structure_coder():
    """Decodes a SavedModel's function signatures without loading it (info)."""
    from tensorflow.python.saved_model import nested_structure_coder as module

    return module


def saved_metadata_pb2():
    """tf.keras 2's keras_metadata.pb protobuf (layer configs of its SavedModels)."""
    tf_keras()  # registers the protobuf module
    from tf_keras.protobuf import saved_metadata_pb2 as module

    return module


def keras_layer_class():
    """Keras 3's Layer, whose add_weight the weight bound wraps while a model loads."""
    from keras.src.layers import layer as module

    return module.Layer


def tf_keras_layer_class():
    from tf_keras.src.engine import base_layer as module

    return module.Layer


def keras_safe_mode(safe: bool):
    """Keras 3's safe-mode scope for deserializing a config (Lambda layers refused)."""
    from keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(safe)


def tf_keras_safe_mode(safe: bool):
    """Safe mode for tf-keras deserialization, where tf-keras supports it."""
    import contextlib

    try:
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # pragma: no cover - older tf-keras
        return contextlib.nullcontext()
    return SafeModeScope(safe)


__all__ = ["keras", "tf", "tf_keras"]
