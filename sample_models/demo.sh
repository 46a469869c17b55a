#!/usr/bin/env bash
# `make demo`: gradcli on the sample models. Each step prints the command it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
G=.venv/bin/gradcli
S=sample_models
OUT=demo-out
mkdir -p "$OUT"

bold=""; plain=""
if [ -t 1 ]; then bold=$'\033[1m'; plain=$'\033[0m'; fi
step() {
    printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"
    "$@"
}

echo "gradcli demo: small models trained on synthetic data (see $S/README.md)."

# What is in the shapes classifier, and which layers --layer can name
step $G info $S/shapes_cnn.keras

# Saliency of each image's predicted class; heatmaps as PNGs
step $G wrt-input $S/shapes_cnn.keras $S/shapes_x.npy --class pred --png $OUT/saliency -o $OUT/saliency.npz

# Where the CNN looks for each image's true class: Grad-CAM on its last spatial layer
step $G wrt-input $S/shapes_cnn.keras $S/shapes_x.npy --class $S/shapes_y.npy -m gradcam --png $OUT/gradcam --png-limit 4

# Integrated Gradients of the loss with the true labels (signed: red raises the loss),
# with its completeness check
step $G wrt-input $S/shapes_cnn.keras $S/shapes_x.npy --target $S/shapes_y.npy -m integrated --steps 64 --png $OUT/ig --png-limit 4

# Only features 1, 4 and 7 matter to the tabular model: they top the saliency list
step $G wrt-input $S/tabular_mlp.keras $S/tabular_x.npy --top 4

# A layer inside a nested model, by its path
step $G wrt-layer $S/nested.keras $S/legacy_x.npy --layer block/a --layer pre

# A legacy .h5 (Sequential without Input, loss only in its training_config): weight gradients
step $G wrt-weights $S/legacy_mlp.h5 $S/legacy_x.npy --target $S/legacy_y.npy --png $OUT/legacy_flow.png

# A directory of checkpoints as a CI gate: fail on NaN or disconnected gradients. One HTML
# report of the run (first the trajectory: each layer's gradient norm over the checkpoints),
# and the trajectory as a PNG
step $G wrt-weights $S/checkpoints $S/tabular_x.npy --target $S/tabular_y.npy --fail-on nonfinite,disconnected --html $OUT/report.html --png $OUT/trajectory.png

# Autodiff against finite differences
step $G check $S/two_io.keras $S/two_io_x.npz --target $S/two_io_y.npz --wrt weights

printf '\nPictures and arrays are in %s/ (saliency/*.png, gradcam/*.png, ig/*.png, legacy_flow.png,\ntrajectory.png); open %s/report.html in a browser.\n' "$OUT" "$OUT"
