#!/usr/bin/env bash
# Table 3, RAT row: pathology 4x super-resolution on TMA (460 / 113 images), SAM ViT-B regions,
# focal region loss, 200K iterations, batch 8, 256 x 256 patches, Adam 2e-4 -> 1e-6 cosine.
# Splits: give the paper's 460/113 image split as a file, e.g. {"train": [...460 image names], "val": [], "test": [...113 names]}.
set -euo pipefail
: "${TMA_ROOT:?set TMA_ROOT to a folder of HQ TMA images}"
: "${RATLIT_SAM_CHECKPOINT:?set RATLIT_SAM_CHECKPOINT to a SAM ViT-B checkpoint}"
python -m ratlit.train ${LAUNCHER:-} experiment=paper_pathology data.root="$TMA_ROOT" ${TMA_SPLITS:+data.splits=$TMA_SPLITS} \
  sweep_name=table3_pathology "$@"
