"""`info`: what a model is (format, inputs, outputs, compiled loss, layers)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradcli.jobs.context import base_record, provenance_of
from gradcli.load.handles import ModelHandle


def describe(job: Any, handle: ModelHandle) -> dict:
    """The model's description; needs no INPUT."""
    rec = base_record(job, handle)
    rec.update(
        endpoint=handle.endpoint,
        inputs=[{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in handle.inputs],
        outputs=[
            {"name": o.name, "shape": list(o.shape), "dtype": o.dtype} for o in handle.outputs
        ],
        loss=handle.compiled_loss_text(),
        loss_note=handle.loss_note,
        layers=[
            {
                "index": r.index,
                "name": r.path,
                "class": r.class_name,
                "output_shape": r.output_shape,
                "params": r.params,
                "depth": r.depth,
            }
            for r in handle.layers
        ],
        trainable_params=int(sum(int(np.prod(v.shape)) for _, v in handle.named_variables())),
        exit_code=0,
    )
    rec["provenance"] = provenance_of(job, handle)
    return rec
