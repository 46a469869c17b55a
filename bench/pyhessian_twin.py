"""The PyTorch side of bench/pyhessian_compare.py, run by the Python of its own venv
(bench-out/pyhessian-venv: torch and PyHessian, never gradcli's dependencies).

usage: bench-out/pyhessian-venv/bin/python bench/pyhessian_twin.py DIR
DIR holds what pyhessian_compare.py wrote: spec.json (the layer chain), weights.npz (in
PyTorch's layout), x.npy, y.npy and reference.npz (the Keras loss and gradient). Prints one
JSON line: how far the twin is from Keras (loss, gradient), then PyHessian's top eigenvalue
(`eigenvalues()`, power iteration) and trace (`trace()`, Hutchinson) with their defaults,
the Hessian-vector products each used, and the wall times.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np


def torch_side(directory: Path) -> dict:
    """Runs in the PyHessian venv: the twin, its agreement with Keras, PyHessian's figures."""
    import importlib

    import torch

    # the module, not the class `pyhessian.hessian` that the package's __init__ exports
    ph = importlib.import_module("pyhessian.hessian")

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    spec = json.loads((directory / "spec.json").read_text())
    weights = np.load(directory / "weights.npz")
    reference = np.load(directory / "reference.npz")

    class NHWCFlatten(torch.nn.Module):  # Keras flattens (h, w, c)
        def forward(self, t):
            return t.permute(0, 2, 3, 1).flatten(1) if t.dim() == 4 else t.flatten(1)

    modules, weighted = [], {}
    for i, entry in enumerate(spec["layers"]):
        kind = entry["kind"]
        if kind in ("Dense", "Conv2D"):
            w = torch.from_numpy(weights[f"{i}.weight"].copy())
            layer = (
                torch.nn.Linear(w.shape[1], w.shape[0])
                if kind == "Dense"
                else (torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:])))
            )
            with torch.no_grad():
                layer.weight.copy_(w)
                layer.bias.copy_(torch.from_numpy(weights[f"{i}.bias"].copy()))
            modules.append(layer)
            weighted[i] = layer
            act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "linear": None}[
                entry["activation"]
            ]
            modules += [act()] if act else []
        elif kind == "MaxPooling2D":
            modules.append(torch.nn.MaxPool2d(2))
        else:
            modules.append(NHWCFlatten())
    model = torch.nn.Sequential(*modules).eval()
    x = torch.from_numpy(np.load(directory / "x.npy"))
    x = x.permute(0, 3, 1, 2).contiguous() if x.dim() == 4 else x
    y = torch.from_numpy(np.load(directory / "y.npy")).long()
    criterion = torch.nn.CrossEntropyLoss()

    loss = criterion(model(x), y)
    loss.backward()
    twin = {
        "loss": abs(loss.item() - float(reference["loss"])) / abs(float(reference["loss"])),
        "losses": [loss.item(), float(reference["loss"])],
    }
    worst = 0.0
    for i, layer in weighted.items():
        for part in ("weight", "bias"):
            ref = reference[f"{i}.{part}"]
            got = getattr(layer, part).grad.numpy()
            worst = max(worst, float(np.max(abs(got - ref)) / np.max(abs(ref))))
    twin["gradient"] = worst
    model.zero_grad()

    count = {"n": 0}
    product = ph.hessian_vector_product

    def counted(*args, **kwargs):
        count["n"] += 1
        return product(*args, **kwargs)

    ph.hessian_vector_product = counted
    start = time.perf_counter()
    comp = ph.hessian(model, criterion, data=(x, y), cuda=False)
    ready = time.perf_counter()
    top, _ = comp.eigenvalues(top_n=1)
    top_products, middle = count["n"], time.perf_counter()
    samples = np.array(comp.trace())
    end = time.perf_counter()
    return {
        "twin": twin,
        "top_lm": float(top[0]),
        "top_products": top_products,
        "top_seconds": middle - start,
        "setup_seconds": ready - start,
        "trace": float(samples.mean()),
        "trace_stderr": float(samples.std(ddof=1) / math.sqrt(len(samples)))
        if len(samples) > 1
        else math.nan,
        "trace_probes": len(samples),
        "trace_seconds": end - middle,
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    print(json.dumps(torch_side(Path(sys.argv[1]))))
