#!/usr/bin/env bash
# Table 2, RAT row: CT denoising on AAPM-Mayo 2016 (quarter -> full dose, 9 / 1 patients), SAM ViT-B regions,
# focal region loss, 200K iterations, batch 8, 256 x 256 patches, Adam 2e-4 -> 1e-6 cosine.
# Splits: give the paper's 9/1 patient split as a file, e.g. {"train": [...9 ids], "val": [], "test": ["L506"]}.
set -euo pipefail
: "${AAPM_ROOT:?set AAPM_ROOT to the AAPM-Mayo folder (one folder per patient with full/quarter-dose series)}"
: "${RATLIT_SAM_CHECKPOINT:?set RATLIT_SAM_CHECKPOINT to a SAM ViT-B checkpoint}"
python -m ratlit.train ${LAUNCHER:-} experiment=paper_ct data.root="$AAPM_ROOT" ${CT_SPLITS:+data.splits=$CT_SPLITS} \
  sweep_name=table2_ct "$@"
