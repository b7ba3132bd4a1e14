"""Every option of every config group composes into a config whose nodes instantiate."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers.configs import GROUPS
from ratlit.losses import LOSSES
from ratlit.models import RAT
from ratlit.partition import Partitioner
from ratlit.training.module import RestorationModule
from ratlit.utils.config import CONF_DIR

PRESET_SIZES = {"smoke": "tiny", "cpu_ablation": "small"}


def _compose(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["run_dir=/tmp/ratlit-compose", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_group_folders_match_this_list():
    for group, options in GROUPS.items():
        found = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert found == sorted(options), group


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group, option):
    cfg = _compose(f"{group}={option}")
    for node in ("data", "model", "trainer"):
        assert "_target_" in cfg[node], node
    assert all("_target_" in lg for lg in cfg.logger.values())
    for key in cfg:  # every interpolation resolves (Hydra's own node needs a running job)
        if key != "hydra" and OmegaConf.is_config(cfg[key]):
            OmegaConf.to_container(cfg[key], resolve=True)


def test_default_config_is_the_paper_network():
    cfg = _compose()
    net = instantiate(cfg.model.net)
    assert isinstance(net, RAT)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in RAT().parameters())
    assert cfg.model.optimizer.lr == 2e-4 and list(cfg.model.optimizer.betas) == [0.5, 0.999]
    assert cfg.model.scheduler.eta_min == 1e-6
    assert cfg.data.patch_size == 256 and cfg.data.batch_size == 8 and cfg.trainer.max_steps == 200000


@pytest.mark.parametrize("task, channels, patch", [("ct", 1, 256), ("pet", 1, 192), ("pathology", 3, 256)])
def test_task_sets_channels_and_patch(task, channels, patch):
    cfg = _compose(f"task={task}", "experiment=smoke")
    assert cfg.model.net.in_channels == channels
    assert _compose(f"task={task}").data.patch_size == patch
    module = instantiate(cfg.model)
    assert isinstance(module, RestorationModule)
    out = module(torch.rand(1, channels, 16, 16), torch.zeros(1, 16, 16, dtype=torch.long))
    assert out.shape == (1, channels, 16, 16)


@pytest.mark.parametrize("model", GROUPS["model"])
@pytest.mark.parametrize("task", GROUPS["task"])
def test_every_model_instantiates_for_every_task(model, task):
    cfg = _compose(f"model={model}", f"task={task}")
    net = instantiate(cfg.model.net)
    channels = cfg.model.net.in_channels
    assert net(torch.rand(1, channels, 24, 24), torch.zeros(1, 24, 24, dtype=torch.long)).shape == (1, channels, 24, 24)
    assert ("attention" in cfg.model.net) == (model == "rat")


@pytest.mark.parametrize("attention", ["rmsa", "wmsa", "msa"])
@pytest.mark.parametrize("loss", ["fr", "l1", "mse", "charbonnier"])
def test_attention_and_loss_axes(attention, loss):
    cfg = _compose(f"attention={attention}", f"loss={loss}", "experiment=smoke")
    module = instantiate(cfg.model)
    assert module.net.attention == attention
    assert isinstance(module.loss, LOSSES[loss])


@pytest.mark.parametrize("name", ["slic", "felzenszwalb", "grid", "single"])
def test_partition_configs(name):
    partitioner = instantiate(_compose(f"partition={name}").partition)
    assert isinstance(partitioner, Partitioner) and partitioner.name == name


def test_sam_config_without_checkpoint_falls_back_only_when_asked(monkeypatch):
    monkeypatch.delenv("RATLIT_SAM_CHECKPOINT", raising=False)
    with pytest.raises(InstantiationException, match="No SAM checkpoint") as info:
        instantiate(_compose("partition=sam").partition)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.warns(UserWarning, match="USING SLIC INSTEAD"):
        spec = instantiate(_compose("partition=sam_or_slic").partition).spec
    assert spec["name"] == "slic" and spec["requested"] == "sam"


def test_paper_experiments_use_the_paper_settings():
    for task, patch in (("ct", 256), ("pet", 192), ("pathology", 256)):
        cfg = _compose(f"experiment=paper_{task}")
        assert cfg.task_name == task and cfg.data.patch_size == patch and cfg.data.batch_size == 8
        assert cfg.trainer.max_steps == 200000 and cfg.partition.model_type == "vit_b"
        assert cfg.partition._target_.endswith("build_sam_partitioner") and cfg.partition.fallback is None


def test_slurm_preset_keeps_tasks_and_devices_in_step():
    cfg = _compose("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 4 and launcher["nodes"] == 1


def test_model_yamls_hold_only_their_network():
    """Module, optimiser and scheduler come from one shared place; channels and range from the task."""
    for path in (CONF_DIR / "model").glob("*.yaml"):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        node = node.get("model", node)
        assert set(node) == {"net"}, path.name
        assert node["net"]["in_channels"] == "${in_channels}", path.name
    cfg = _compose("task=pathology", "model=edsr")
    assert cfg.model.net.in_channels == 3 and cfg.model.data_range == cfg.data_range == 1.0
    module = instantiate(cfg.model)
    optimizer = module.optimizer_factory(module.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and tuple(optimizer.defaults["betas"]) == (0.5, 0.999)
    assert type(optimizer.defaults["betas"]) in (tuple, list)  # plain types: checkpoints load with weights_only


@pytest.mark.parametrize("experiment", sorted(PRESET_SIZES))
@pytest.mark.parametrize("task", GROUPS["task"])
def test_cpu_presets_work_for_every_model(experiment, task):
    """Each model states its own small sizes (conf/model_size/<model>_<size>.yaml); one forward / backward."""
    for model in GROUPS["model"]:
        cfg = _compose(f"model={model}", f"task={task}", f"experiment={experiment}")
        assert (CONF_DIR / "model_size" / f"{model}_{PRESET_SIZES[experiment]}.yaml").is_file(), model
        module = instantiate(cfg.model)
        full = _compose(f"model={model}", f"task={task}").model.net
        assert cfg.model.net != full, model  # the preset really changed the size
        channels, size = cfg.in_channels, 32
        lq = torch.rand(2, channels, size, size)
        regions = (torch.arange(size)[:, None] // 8 * 4 + torch.arange(size)[None, :] // 8).expand(2, size, size)
        pred = module(lq, regions)
        loss = module.loss(pred, torch.rand_like(lq), regions)
        loss.backward()
        assert pred.shape == lq.shape and torch.isfinite(loss), model
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), model


def test_a_module_built_in_code_gets_the_optimiser_of_the_config_file():
    import torch
    from omegaconf import OmegaConf

    from ratlit.losses import L1Loss
    from ratlit.models.edsr import EDSR
    from ratlit.training.module import RestorationModule

    written = OmegaConf.load(CONF_DIR / "optimizer" / "adam.yaml")
    module = RestorationModule(EDSR(1, features=4, blocks=1), L1Loss())
    optimizer = module.optimizer_factory(module.parameters())
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == written.optimizer.lr
    assert tuple(optimizer.defaults["betas"]) == tuple(written.optimizer.betas)
    cosine = module.scheduler_factory(optimizer, T_max=10)
    assert type(cosine).__name__ == "CosineToEnd" and cosine.eta_min == written.scheduler.eta_min
    assert RestorationModule(EDSR(1, features=4, blocks=1), L1Loss(), scheduler=None).scheduler_factory is None


@pytest.mark.parametrize("overrides", [["trainer=gpu"], ["experiment=paper_ct"], ["experiment=paper_pet"],
                                       ["experiment=paper_pathology"], []])
def test_gpu_runs_compile_by_default_and_cpu_runs_stay_eager(overrides, monkeypatch):
    from ratlit.training.compiling import compiles_on

    cfg = _compose(*overrides)
    assert cfg.model.compile == "auto" and cfg.model.cuda_graph == "auto"
    assert compiles_on(cfg.model.compile, torch.device("cuda"))
    assert not compiles_on(cfg.model.compile, torch.device("cpu"))
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: pytest.fail("compiled on the CPU"))
    module = instantiate(cfg.model)
    module.configure_model()  # on the CPU: eager
    assert module.compile_net == "auto" and module.compiled_blocks == []
    assert _compose(*overrides, "model.compile=false").model.compile is False  # one switch away


def test_a_bad_compile_value_is_one_error_naming_the_key():
    with pytest.raises(InstantiationException) as info:
        instantiate(_compose("experiment=smoke", "model.compile=sometimes").model)
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "model.compile must be true, false or auto, got 'sometimes'"


def test_a_mistyped_key_names_itself_and_the_arguments_there_are():
    from omegaconf import OmegaConf

    from ratlit.utils.config import instantiate
    from ratlit.utils.errors import InputError

    cfg = OmegaConf.create({"model": {"net": {"_target_": "ratlit.models.RAT", "widht": 8}}})
    with pytest.raises(InputError, match=r"model\.net\.widht: ratlit\.models\.RAT takes no argument 'widht'.*width"):
        instantiate(cfg.model.net)
    # Keys passed by the caller and callables that take **kwargs are not refused.
    assert instantiate({"_target_": "builtins.dict", "a": 1}) == {"a": 1}
    opt = OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})
    assert instantiate(opt).keywords == {"lr": 1e-3}
