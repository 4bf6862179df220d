#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has torch, torchvision, numpy, tqdm, pyyaml, regex, pillow),
# fetched here into .whl/ (git-ignored) so that the device tool can carry them.
# openai-clip and loralib are pure Python; openai-clip is published only as a source archive,
# so it is built into a wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip wheel -q --no-deps -w .whl openai-clip==1.0.1 loralib==0.1.2 ftfy==6.3.1 wcwidth
ls .whl
