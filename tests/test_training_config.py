"""Training config: defaults are the official recipe, YAML + dotted overrides, loud errors."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml")

from training.config import Config, ConfigError, config_from_dict, config_to_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_defaults_are_the_official_vits16_recipe():
    cfg = Config()
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_register_tokens) == (384, 12, 4)
    assert (cfg.model.head_hidden_dim, cfg.model.head_bottleneck_dim, cfg.model.head_n_prototypes) == (2048, 256, 65536)
    assert (cfg.optim.batch_size_per_gpu, cfg.optim.global_batch_size, cfg.optim.epoch_length) == (64, 256, 936)
    assert (cfg.loss.dino_weight, cfg.loss.koleo_weight, cfg.loss.past_ibot_weight, cfg.loss.future_ibot_weight,
            cfg.loss.mse_weight) == (1.0, 0.1, 0.8, 0.8, 20.0)
    assert cfg.augment.blur == "effective" and cfg.optim.lr_groups == "fixed"


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
    ("optim.base_lrr=1", "unknown config key"),
    ("bogus.x=1", "unknown config key"),
    ("optim.epochs=1.5", "optim.epochs: expected int"),
    ("optim.base_lr=yes", "optim.base_lr: expected a number"),
    ("augment.blur=always", "augment.blur: expected one of"),
    ("data.current_range=[0.3]", "data.current_range: expected a list of 2"),
    ("optim.global_batch_size=100", "multiple of"),
    ("model.pmm_num_blocks=0", "pmm_num_blocks"),
    ("optim.base_lr", "expected key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "vits16_k400.yaml", [override])


def test_missing_file_is_file_not_found():
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_config("training/configs/nope.yaml")


def test_round_trip_through_plain_dict():
    cfg = load_config(CONFIGS / "vitb16_k400.yaml", ["optim.lr_groups=march2025"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
