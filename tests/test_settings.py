from __future__ import annotations

from pathlib import Path

import pytest
import tomli

from diffkit.errors import DiffkitError
from diffkit.settings import (
    Settings,
    find_preset,
    list_presets,
    load_saved_settings,
    load_settings,
    parse_overrides,
    preset_chain,
    save_settings,
)

SHIPPED = {"demo", "mnist-cosine", "mnist-hour", "mnist-linear", "fashion-mnist", "cifar10-cfg", "mnist-sr", "tiny"}


def test_shipped_presets_all_load_and_validate() -> None:
    found = list_presets()
    assert set(found) >= SHIPPED
    for name in SHIPPED:
        s = load_settings(name)
        assert s.name == name
        assert found[name][1], f"preset {name} has no description"


def test_extends_chain_and_override_order() -> None:
    chain = [p.stem for p in preset_chain("mnist-linear")]
    assert chain == ["base", "mnist-cosine", "mnist-linear"]
    s = load_settings("mnist-linear")
    assert s.diffusion.schedule == "linear"  # own key
    assert s.data.dataset == "mnist"  # from mnist-cosine
    assert s.model.attention_resolutions == [7]  # from base
    assert s.train.p_uncond == pytest.approx(0.1)


def test_layering_preset_then_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings("demo").train.lr == pytest.approx(2e-3)  # preset
    monkeypatch.setenv("DIFFKIT_TRAIN__LR", "0.0005")
    monkeypatch.setenv("DIFFKIT_DATA_DIR", "/some/where")
    s = load_settings("demo")
    assert s.train.lr == pytest.approx(5e-4)  # environment beats preset
    assert s.data_dir == "/some/where"
    s = load_settings("demo", parse_overrides(["train.lr=1e-4"]))
    assert s.train.lr == pytest.approx(1e-4)  # flags beat environment
    preset = tomli.loads(find_preset("demo").read_text())
    assert s.train.batch_size == preset["train"]["batch_size"]  # untouched keys keep the preset's value


def test_set_parses_toml_values() -> None:
    o = parse_overrides(
        [
            "model.channel_mults=[1,2]",
            "diffusion.schedule=linear",
            "train.bf16=true",
            "train.lr=3e-4",
            'name="x y"',
        ]
    )
    assert o == {
        "model": {"channel_mults": [1, 2]},
        "diffusion": {"schedule": "linear"},
        "train": {"bf16": True, "lr": 3e-4},
        "name": "x y",
    }
    with pytest.raises(DiffkitError, match="key=value"):
        parse_overrides(["train.lr"])


def test_unknown_key_is_an_error_naming_it() -> None:
    with pytest.raises(DiffkitError, match=r"unknown setting train\.learning_rate"):
        load_settings("demo", parse_overrides(["train.learning_rate=1"]))


def test_out_of_range_names_key_and_range() -> None:
    with pytest.raises(DiffkitError, match=r"invalid setting train\.lr = -1.*greater than 0"):
        load_settings("demo", parse_overrides(["train.lr=-1"]))
    with pytest.raises(DiffkitError, match=r"train\.p_uncond.*less than or equal to 1"):
        load_settings("demo", parse_overrides(["train.p_uncond=1.5"]))
    with pytest.raises(DiffkitError, match=r"diffusion\.schedule"):
        load_settings("demo", parse_overrides(["diffusion.schedule=quadratic"]))
    with pytest.raises(DiffkitError, match="norm_groups"):
        load_settings("demo", parse_overrides(["model.norm_groups=7"]))


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(DiffkitError, match=r"unknown preset 'nope'.*demo.*mnist-cosine"):
        load_settings("nope")


def test_preset_from_path_and_cycle(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('extends = "b.toml"\n[train]\nmax_steps = 3\n')
    b.write_text('extends = "a.toml"\n')
    with pytest.raises(DiffkitError, match="cycle"):
        load_settings(str(a))
    b.write_text('extends = "tiny"\n[model]\nbase_channels = 16\n')
    s = load_settings(str(a))
    assert (s.train.max_steps, s.model.base_channels, s.data.dataset) == (3, 16, "synthetic")


def test_saved_settings_round_trip_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings("cifar10-cfg", parse_overrides(["train.lr=1e-3", "model.num_classes=10"]))
    save_settings(s, tmp_path / "config.toml")
    monkeypatch.setenv("DIFFKIT_TRAIN__LR", "0.5")  # a saved run is not re-layered by the environment
    again = load_saved_settings(tmp_path / "config.toml")
    assert again.model_dump(exclude={"extends"}) == s.model_dump(exclude={"extends"})


def test_plain_settings_ignore_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFKIT_TRAIN__LR", "0.5")
    assert Settings.model_validate({"train": {"max_steps": 1}}).train.lr == pytest.approx(2e-4)


def test_zero_terminal_snr_refuses_eps_objective() -> None:
    with pytest.raises(DiffkitError, match="zero_terminal_snr needs objective v"):
        load_settings("mnist-cosine", parse_overrides(["diffusion.zero_terminal_snr=true"]))
    s = load_settings("mnist-cosine", parse_overrides(["diffusion.zero_terminal_snr=true", "diffusion.objective=v"]))
    assert s.diffusion.zero_terminal_snr


def test_preset_tables_merge_key_by_key(tmp_path: Path) -> None:
    parent, child = tmp_path / "parent.toml", tmp_path / "child.toml"
    parent.write_text('extends = "tiny"\n[train]\ngrad_clip = 0.25\np_uncond = 0.3\n')
    child.write_text('extends = "parent.toml"\n[train]\nlr = 0.01\n')
    s = load_settings(str(child))
    assert (s.train.lr, s.train.grad_clip, s.train.p_uncond) == (0.01, 0.25, 0.3)
    assert s.train.max_steps == 14  # from tiny, two levels up
