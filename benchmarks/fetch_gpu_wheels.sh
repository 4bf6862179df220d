#!/usr/bin/env bash
# Wheels the GPU machine lacks (its image has torch, torchvision, numpy, tqdm, pyyaml, regex,
# pillow, filelock, pytest, timm, huggingface-hub, safetensors, scipy, scikit-image and
# opencv-python-headless: /work/.library/device/KINDS.md), fetched here into .whl/
# (git-ignored) so that the device tool can carry them. open_clip_torch and imagecorruptions
# come without their dependencies (all in the image), so that the OpenCLIP and retention
# tests run there too.
# openai-clip and loralib are pure Python; openai-clip is published only as a source archive,
# so it is built into a wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip wheel -q --no-deps -w .whl openai-clip==1.0.1 loralib==0.1.2 ftfy==6.3.1 wcwidth \
  open_clip_torch==3.3.0 imagecorruptions==1.1.2
ls .whl
