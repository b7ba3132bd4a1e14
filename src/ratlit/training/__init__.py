"""Training: the LightningModule, its callbacks, loggers (all W&B code), compiling and CUDA graphs, run folders,
resume, checkpoints, results and sweep launching."""
