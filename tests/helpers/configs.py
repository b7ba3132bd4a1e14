"""The shipped config groups and their options (tests/test_configs.py checks this list against conf/)."""

GROUPS = {
    "task": ["ct", "pet", "pathology"],
    "model": ["rat", "nafnet", "cnn", "redcnn", "edcnn", "srcnn", "edsr", "rcan", "swinir", "dcnn", "unet"],
    "attention": ["rmsa", "wmsa", "msa", "none"],
    "loss": ["fr", "l1", "mse", "charbonnier", "edcnn"],
    "partition": ["sam", "sam_or_slic", "sam_or_litemedsam", "litemedsam", "slic", "felzenszwalb", "grid", "single"],
    "trainer": ["default", "cpu", "gpu", "ddp"],
    "logger": ["csv", "wandb", "tensorboard", "all"],
    "callbacks": ["default"],
    "experiment": ["smoke", "cpu_ablation", "cpu_ct", "cpu_pet", "cpu_pathology", "paper_ct", "paper_pet",
                   "paper_pathology"],
    "optimizer": ["adam"],
    "size": ["full", "small", "tiny"],
}
