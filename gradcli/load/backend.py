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


__all__ = ["keras", "tf", "tf_keras"]
