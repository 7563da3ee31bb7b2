from __future__ import annotations

import json
from pathlib import Path

import pytest

from ur4rec.cli import main
from ur4rec.config import CONFIG_DIR, Config, diff_configs, load_config, parse_overrides
from ur4rec.errors import ConfigError

# Every flat key of the original UR4Rec V2 MoE config, with values of the kind it used.
ORIGINAL_FLAT_CONFIG = """
num_items: 1682
max_seq_len: 50
sasrec_hidden_dim: 256
sasrec_num_blocks: 2
sasrec_num_heads: 4
sasrec_dropout: 0.1
text_model_name: all-MiniLM-L6-v2
text_embedding_dim: 384
retriever_output_dim: 512
moe_num_heads: 8
moe_dropout: 0.1
moe_num_proxies: 8
max_memory_size: 5
update_trigger: INTERACTION_COUNT
interaction_threshold: 10
drift_threshold: 0.3
decay_factor: 0.95
fusion_method: weighted
sasrec_weight: 0.5
retriever_weight: 0.5
sasrec_lr: 0.001
retriever_lr: 0.0001
use_uncertainty_weighting: true
use_adaptive_alternating: true
adaptive_switch_threshold: 0.01
adaptive_min_steps: 100
stages: [pretrain_sasrec, pretrain_retriever, joint_finetune, end_to_end]
epochs_per_stage: 10
patience: 5
batch_size: 32
num_workers: 4
seed: 42
num_negatives: 5
"""


def test_shipped_configs_load() -> None:
    full = load_config(CONFIG_DIR / "ur4rec_moe_100k.yaml")
    quick = load_config(CONFIG_DIR / "quick.yaml")
    assert full.profile == "full" and quick.profile == "quick"
    assert quick.max_users is not None and full.max_users is None
    assert full.hash() != quick.hash()


def test_original_flat_keys_load_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "original.yaml"
    path.write_text(ORIGINAL_FLAT_CONFIG)
    cfg = load_config(path)
    assert load_config(CONFIG_DIR / "original_512d.yaml").to_dict() == cfg.to_dict()  # the shipped copy
    assert cfg.retriever_output_dim == 512 and cfg.moe_num_proxies == 8 and cfg.num_negatives == 5
    assert cfg.num_items == 1682 and cfg.use_uncertainty_weighting is True


def test_unknown_key_names_it_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sasrec_hiden_dim: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "sasrec_hiden_dim" in msg and "sasrec_hidden_dim" in msg and str(path) in msg


def test_wrong_type_names_key_value_and_expectation() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["batch_size=lots"])
    msg = str(err.value)
    assert "batch_size" in msg and "'lots'" in msg and "integer" in msg


@pytest.mark.parametrize(
    "override, key",
    [("sasrec_dropout=1.5", "sasrec_dropout"), ("fusion_method=average", "fusion_method"),
     ("stages=[pretrain_sasrec, warmup]", "stages"), ("split_ratios=[0.5, 0.5, 0.5]", "split_ratios"),
     ("sasrec_num_heads=3", "sasrec_num_heads")],
)
def test_out_of_range_values_are_rejected(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=[override])


def test_missing_config_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\nstages: [a, b\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(path)


def test_overrides_are_typed_yaml() -> None:
    assert parse_overrides(["batch_size=64", "stages=[pretrain_sasrec]", "min_rating=4", "data_path="]) == {
        "batch_size": 64, "stages": ["pretrain_sasrec"], "min_rating": 4, "data_path": None,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["batch_size"])


def test_diff_configs_lists_changed_keys() -> None:
    a = Config().to_dict()
    b = Config(sasrec_dropout=0.0, sasrec_hidden_dim=128).to_dict()
    assert set(diff_configs(a, b)) == {"sasrec_dropout", "sasrec_hidden_dim"}


def test_config_show_cli_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "--config", str(CONFIG_DIR / "quick.yaml"), "--set", "seed=7", "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    payload = json.loads(last)
    assert payload["config"]["seed"] == 7 and payload["config"]["profile"] == "quick"


def test_cli_error_is_one_clear_line_and_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "--set", "batch_sise=3", "--json"]) == 2
    out, err = capsys.readouterr()
    assert "batch_size" in err and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["ok"] is False
