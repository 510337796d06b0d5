from __future__ import annotations

import pytest
import yaml

from cellgen.config import PRESETS, CellgenConfig, load_config
from cellgen.errors import ConfigError


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    config = load_config(name)
    assert isinstance(config, CellgenConfig)


def test_reference_presets_have_reference_numbers():
    for name, fraction in (("plat", 0.03), ("cele", 0.06), ("filo", 0.06)):
        c = load_config(name)
        assert c.data.size == (256, 256, 256)
        assert c.data.sample_fraction == fraction
        assert c.model.hidden_dims == [128] * 10
        assert c.model.latent_in == [4, 7]
        assert c.model.latent_dim == 192 and c.model.omega == 30
        assert c.model.rotations
        assert (c.train.lr_decoder, c.train.lr_codes, c.train.lr_step) == (1e-4, 1e-3, 350)
        assert c.generate.frames == 30 and c.generate.n == 33


def test_overrides_parse_yaml_values():
    c = load_config("demo", ["model.omega=20", "model.hidden_dims=[8, 8]", "model.latent_in=[1]", "generate.size=256,256,32"])
    assert c.model.omega == 20.0
    assert c.model.hidden_dims == [8, 8]
    assert c.generate.size == (256, 256, 32)


def test_grid_size_accepts_a_single_number():
    assert load_config(None, ["data.size=64"]).data.size == (64, 64, 64)


def test_unknown_key_names_key_and_allowed_ones():
    with pytest.raises(ConfigError) as info:
        load_config("demo", ["model.omgea=3"])
    msg = str(info.value)
    assert "model.omgea" in msg and "omega" in msg and "latent_dim" in msg
    assert "\n" not in msg


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="model.omega"):
        load_config("demo", ["model.omega=fast"])


def test_unknown_top_level_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"modle": {"omega": 3}}))
    with pytest.raises(ConfigError, match="modle.*allowed keys here: name, line, data, model"):
        load_config(path)


def test_bad_layer_index_is_explained():
    with pytest.raises(ConfigError, match="only 2 hidden layers"):
        load_config(None, ["model.hidden_dims=[8, 8]", "model.latent_in=[5]"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    from cellgen.config import dump_config

    c = load_config("cele", ["train.epochs=7"])
    dump_config(c, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == c


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("demo", ["model.omega"])


def test_atomic_files_get_the_usual_mode(tmp_path):
    import os
    import stat

    from cellgen.io import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
