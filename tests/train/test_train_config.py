"""Typed training config: recipes, `--key=value` overrides converted by field type, validation with the valid
options, and the command-line options generated from the dataclass.
Run: pytest tests/train/test_train_config.py"""

from __future__ import annotations

import pytest

from xinzhou.configs.train import (
    TrainConfig,
    apply_overrides,
    config_diff,
    config_keys,
    get_recipe,
    list_recipes,
    parse_overrides,
    resolve,
)


def test_recipes_resolve_and_validate():
    assert {"tiny", "debug"} <= set(list_recipes("pretrain")) and "sft-tiny" in list_recipes("sft")
    for name in list_recipes():
        cfg = resolve(name)
        assert cfg.recipe == name
        cfg.model_config()  # the model overrides are valid ModelConfig fields


def test_tiny_recipe_is_a_small_hybrid():
    import torch

    from xinzhou.model.model import Model

    cfg = resolve("tiny").model_config()
    assert cfg.vocab_size == 1024 and "linear_attention" in cfg.layer_types and "full_attention" in cfg.layer_types
    with torch.device("meta"):
        total, _ = Model(cfg).count_parameters()
    assert 1e6 <= total <= 5e6


def test_overrides_are_typed():
    cfg = apply_overrides(get_recipe("debug"), parse_overrides(
        ["--lr=1e-4", "--max_steps=7", "--resume", "--progress=false", "--schedule=wsd",
         "--model.hidden_size=48", "--model.layer_types=full_attention,linear_attention", "--model.eos_token_id=5"]))
    assert cfg.lr == 1e-4 and cfg.max_steps == 7 and cfg.resume is True and cfg.progress is False
    assert cfg.schedule == "wsd"
    assert cfg.model_overrides["hidden_size"] == 48
    assert cfg.model_overrides["layer_types"] == ("full_attention", "linear_attention")
    assert cfg.model_overrides["eos_token_id"] == 5
    assert cfg.model_overrides["num_experts"] == 4  # the recipe's other model overrides are kept
    assert apply_overrides(cfg, {"model.bos_token_id": "none"}).model_overrides["bos_token_id"] is None


@pytest.mark.parametrize("overrides, match", [
    ({"lerning_rate": "1"}, "unknown config key 'lerning_rate'.*valid keys"),
    ({"lr": "fast"}, "--lr takes a number"),
    ({"max_steps": "1.5"}, "--max_steps takes an integer"),
    ({"resume": "maybe"}, "--resume takes true or false"),
    ({"schedule": "linear"}, r"--schedule must be one of \['cosine', 'wsd', 'constant'\]"),
    ({"model.hiden_size": "3"}, "unknown config key 'model.hiden_size'"),
])
def test_bad_overrides_name_the_valid_options(overrides, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(get_recipe("debug"), overrides)


@pytest.mark.parametrize("overrides, match", [
    ({"batch_size": 5}, r"batch_size \(5\) must be a multiple of micro_batch_size \(2\)"),
    ({"seq_len": 5000}, r"seq_len \(5000\) exceeds the model's max_position_embeddings \(1024\)"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"resume": True, "overwrite": True}, "resume and overwrite exclude each other"),
    ({"eval_fraction": 1.0}, "eval_fraction must be in"),
])
def test_validate(overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve("debug", overrides)


def test_resolve_checks_the_task_and_recipe():
    with pytest.raises(ValueError, match="recipe 'tiny' is a pretrain recipe; sft recipes: sft-tiny"):
        resolve("tiny", task="sft")
    with pytest.raises(ValueError, match="unknown recipe 'huge'; valid options: .*tiny"):
        resolve("huge")


def test_grad_accum_depends_on_world_size():
    cfg = resolve("debug", {"batch_size": 8, "micro_batch_size": 2})
    assert cfg.grad_accum(1) == 4 and cfg.grad_accum(2) == 2 and cfg.grad_accum(4) == 1
    with pytest.raises(ValueError, match=r"multiple of micro_batch_size x processes \(2 x 3 = 6\)"):
        cfg.grad_accum(3)


def test_config_diff_ignores_resumable_fields_and_round_trips():
    a = resolve("debug")
    b = apply_overrides(a, {"progress": "true", "micro_batch_size": "1", "lr": "0.5"})
    assert config_diff(a, b) == {"lr": (a.lr, 0.5)}
    assert config_diff(a, apply_overrides(a, {"model.num_experts": "8"})) == {"model.num_experts": (4, 8)}
    assert TrainConfig.from_dict(b.to_dict()) == b
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        TrainConfig.from_dict({"nope": 1})


def test_command_line_options_cover_every_key():
    import argparse

    from xinzhou.commands.pretrain import add_config_arguments

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, "pretrain", "tiny")
    args = parser.parse_args(["--lr=0.5", "--resume", "--model.num_layers", "2"])
    given = {k: v for k, v in vars(args).items() if k in config_keys() and k != "recipe"}
    assert given == {"lr": "0.5", "resume": "true", "model.num_layers": "2"} and args.recipe == "tiny"
    assert all(f"--{k}" in parser.format_help() for k in config_keys() if k not in ("task", "recipe"))
