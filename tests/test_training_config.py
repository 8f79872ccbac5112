"""Training config: defaults are the official recipe, YAML + dotted overrides, and every value
checked when the config is built (the key, the value and what is allowed; the closest key for a
typo); which keys a resume may change."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml")

from training.config import (_RULES, NEVER_BLOCK_RESUME, Config, ConfigError, check_world_size, config_changes,
                             config_from_dict, config_keys, config_to_dict, load_config)

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_defaults_are_the_official_vits16_recipe():
    cfg = Config()
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_register_tokens) == (384, 12, 4)
    assert (cfg.model.head_hidden_dim, cfg.model.head_bottleneck_dim, cfg.model.head_n_prototypes) == (2048, 256, 65536)
    assert (cfg.optim.batch_size_per_gpu, cfg.optim.global_batch_size, cfg.optim.epoch_length) == (64, 256, 936)
    assert (cfg.loss.dino_weight, cfg.loss.koleo_weight, cfg.loss.past_ibot_weight, cfg.loss.future_ibot_weight,
            cfg.loss.mse_weight) == (1.0, 0.1, 0.8, 0.8, 20.0)
    assert cfg.augment.blur == "effective" and cfg.optim.lr_groups == "fixed" and cfg.model.layerscale_init == 1e-5


@pytest.mark.parametrize("name,dim,batch,epochs,warmup", [
    ("vits16_k400", 384, (64, 256), 400, 20), ("vitb16_k400", 768, (32, 128), 200, 10)])
def test_shipped_configs_match_the_paper(name, dim, batch, epochs, warmup):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.embed_dim == dim
    assert (cfg.optim.batch_size_per_gpu, cfg.optim.global_batch_size) == batch
    assert (cfg.optim.epochs, cfg.optim.epoch_length, cfg.optim.warmup_epochs) == (epochs, 936, warmup)


def test_tiny_config_is_small_and_valid():
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert cfg.model.depth == 2 and cfg.model.head_n_prototypes == 256 and cfg.augment.global_size == 32


def test_overrides_are_typed_and_nested():
    cfg = load_config(CONFIGS / "tiny.yaml", ["optim.base_lr=0.004", "optim.epoch_length=auto",
                                              "data.current_range=[0.3, 0.6]", "train.compile=true"])
    assert cfg.optim.base_lr == 0.004 and cfg.optim.epoch_length == "auto"
    assert cfg.data.current_range == (0.3, 0.6) and cfg.train.compile is True


@pytest.mark.parametrize("override,message", [
    ("optim.epochs=1.5", "optim.epochs=1.5: expected an integer"),
    ("optim.base_lr=fast", "optim.base_lr='fast': expected a finite number"),
    ("optim.base_lr=.nan", "optim.base_lr=nan: expected a finite number"),
    ("augment.blur=always", "augment.blur='always': expected one of effective, intended"),
    ("data.current_range=[0.3]", r"data.current_range=\[0.3\]: expected a list of 2 values"),
    ("optim.global_batch_size=100", "optim.global_batch_size=100: must be a multiple of optim.batch_size_per_gpu=64"),
    ("model.pmm_num_blocks=0", "model.pmm_num_blocks=0: must be >= 1"),
    ("optim.base_lr", "expected key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "vits16_k400.yaml", [override])


@pytest.mark.parametrize("override,suggestion", [
    ("optim.base_lrr=1", "optim.base_lr"),
    ("optm.base_lr=1", "optim.base_lr"),                          # a mistyped section
    ("optim.warmup_teacher_temp=0.04", "loss.warmup_teacher_temp"),  # the right key in the wrong section
    ("train.resume_change=optim.base_lr", "train.resume_changes"),
])
def test_an_unknown_key_names_the_closest_valid_one(override, suggestion):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"^unknown config key '{key}'; did you mean '{suggestion}'\\?$"):
        load_config(CONFIGS / "tiny.yaml", [override])


@pytest.mark.parametrize("override,allowed", [
    ("optim.batch_size_per_gpu=-4", "must be >= 2 (KoLeo needs two samples per micro-batch)"),
    ("optim.global_batch_size=-8", "must be >= 1"),
    ("optim.global_batch_size=0", "must be >= 1"),
    ("optim.epochs=0", "must be >= 1"),
    ("optim.warmup_epochs=3", "must be <= optim.epochs=2"),
    ("optim.base_lr=-0.1", "must be >= 0"),
    ("optim.adamw_betas=[0.9, 1.0]", "must be two values in [0, 1)"),
    ("optim.layerwise_decay=0", "must be in (0, 1]"),
    ("loss.student_temp=0", "must be > 0"),
    ("loss.center_momentum=1.5", "must be in [0, 1]"),
    ("mask.probability=-0.5", "must be in [0, 1]"),
    ("mask.ratio_min_max=[0.5, 0.1]", "must be [low, high] with 0 <= low <= high <= 1"),
    ("augment.global_size=40", "must be a positive multiple of model.patch_size=16"),
    ("augment.local_size=0", "must be a positive multiple of model.patch_size=16"),
    ("augment.n_local_crops=0", "must be >= 1"),
    ("augment.global_scale=[0, 1]", "must be [low, high] with 0 < low <= high <= 1"),
    ("data.current_range=[0.7, 0.3]", "must be [low, high] with 0 <= low < high <= 1"),
    ("data.num_workers=-1", "must be >= 0"),
    ("model.drop_path_rate=1", "must be in [0, 1)"),
    ("model.num_heads=3", "must divide model.embed_dim=64"),
    ("train.keep_last=0", "must be >= 1"),
    ("train.log_every=0", "must be >= 1"),
    ("train.seed=-1", "must be >= 0"),
    ("train.resume_changes=optim.base_lrr", "'optim.base_lrr' is not a config key; did you mean 'optim.base_lr'"),
])
def test_a_value_out_of_range_names_the_key_the_value_and_what_is_allowed(override, allowed):
    key, value = override.split("=", 1)
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIGS / "tiny.yaml", [override])
    message = str(caught.value)
    assert message.startswith(f"{key}=") and allowed in message, message
    assert "\n" not in message


def test_every_rule_and_every_resume_exception_is_a_config_key():
    keys = set(config_keys())
    assert set(_RULES) <= keys and NEVER_BLOCK_RESUME <= keys


def test_the_global_batch_must_split_evenly_over_the_processes():
    cfg = load_config(CONFIGS / "tiny.yaml")  # 4 per GPU, global 8
    check_world_size(cfg, 1)
    check_world_size(cfg, 2)
    with pytest.raises(ConfigError, match=r"^optim.global_batch_size=8: must be a positive multiple of "
                                          r"optim.batch_size_per_gpu=4 x 3 processes = 12 \(e.g. "
                                          r"optim.global_batch_size=12\)"):
        check_world_size(cfg, 3)


def test_config_changes_lists_each_key_with_both_values():
    saved = config_to_dict(load_config(CONFIGS / "tiny.yaml"))
    del saved["model"]["layerscale_init"]  # a checkpoint of older code: the missing key has its default
    cfg = load_config(CONFIGS / "tiny.yaml", ["optim.base_lr=0.004", "augment.global_scale=[0.5, 1.0]",
                                              "train.log_every=5"])
    assert config_changes(saved, cfg) == [("augment.global_scale", [0.32, 1.0], [0.5, 1.0]),
                                          ("optim.base_lr", 0.002, 0.004), ("train.log_every", 1, 5)]


def test_missing_file_is_file_not_found():
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_config("training/configs/nope.yaml")


def test_round_trip_through_plain_dict():
    cfg = load_config(CONFIGS / "vitb16_k400.yaml", ["optim.lr_groups=march2025"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
