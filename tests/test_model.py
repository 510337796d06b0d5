"""The model, rotations, checkpoints and the pure training math (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from cellgen.config import ModelConfig, load_config
from cellgen.errors import CheckpointError
from cellgen.model.autodecoder import AutoDecoder
from cellgen.model.decoder import SdfDecoder, Sine, count_parameters
from cellgen.model.rotation import euler_to_matrix, rotate_points
from cellgen.train.checkpoint import check_compatible, load_checkpoint, load_trained_model, save_checkpoint


def small_cfg(**kw) -> ModelConfig:
    base = dict(latent_dim=8, hidden_dims=[32, 32, 32, 32], latent_in=[2], xyz_in_all=True)
    base.update(kw)
    return ModelConfig(**base)


# ---------------------------------------------------------------- decoder


def test_reference_preset_parameter_count():
    decoder = SdfDecoder(load_config("plat").model)
    n = count_parameters(decoder)
    print(f"reference decoder parameters: {n}")
    assert 200_000 <= n <= 240_000


def test_skip_layers_get_the_full_input_and_others_the_coordinates():
    cfg = small_cfg()
    decoder = SdfDecoder(cfg)
    in_dims = [layer.linear.in_features for layer in decoder.layers]
    assert in_dims == [8 + 4, 32 + 4, 32 + 8 + 4, 32 + 4]
    plain = SdfDecoder(small_cfg(xyz_in_all=False, latent_in=[]))
    assert [layer.linear.in_features for layer in plain.layers] == [12, 32, 32, 32]
    out = decoder(torch.randn(5, 8), torch.rand(5, 4))
    assert out.shape == (5,)


def test_siren_init_ranges():
    cfg = small_cfg(omega=30.0, omega_first=10.0)
    decoder = SdfDecoder(cfg)
    first = decoder.layers[0]
    assert first.activation.omega == 10.0 and decoder.layers[1].activation.omega == 30.0
    w0 = first.linear.weight
    assert w0.abs().max() <= 1 / 12 + 1e-7
    assert w0.abs().max() > 0.8 / 12  # really uniform over the range, not a smaller init
    for layer in decoder.layers[1:]:
        n = layer.linear.in_features
        bound = math.sqrt(6 / n) / 30
        assert layer.linear.weight.abs().max() <= bound + 1e-7
        assert layer.linear.weight.abs().max() > 0.8 * bound
        assert isinstance(layer.activation, Sine)


def test_relu_variant_uses_relu_and_default_init():
    decoder = SdfDecoder(small_cfg(activation="relu"))
    assert all(isinstance(layer.activation, torch.nn.ReLU) for layer in decoder.layers)
    # PyTorch's default init for a 36-input layer is bounded by 1/sqrt(36), far wider than SIREN's.
    assert decoder.layers[1].linear.weight.abs().max() > math.sqrt(6 / 36) / 30 * 2


def test_sine_and_relu_differ_on_the_same_input():
    torch.manual_seed(0)
    sine = SdfDecoder(small_cfg())
    torch.manual_seed(0)
    relu = SdfDecoder(small_cfg(activation="relu"))
    x = (torch.randn(4, 8), torch.rand(4, 4))
    assert not torch.allclose(sine(*x), relu(*x))


def test_options_layer_norm_weight_norm_dropout_tanh():
    cfg = small_cfg(layer_norm=[1], weight_norm=[0, 2], dropout=[1], dropout_prob=0.5,
                    latent_dropout=True, tanh_output=True)
    decoder = SdfDecoder(cfg)
    assert isinstance(decoder.layers[1].norm, torch.nn.LayerNorm)
    assert hasattr(decoder.layers[0].linear, "parametrizations")
    assert isinstance(decoder.layers[1].dropout, torch.nn.Dropout)
    x = (torch.randn(64, 8) * 10, torch.rand(64, 4))
    decoder.eval()
    out = decoder(*x)
    assert out.abs().max() < 1  # tanh
    assert torch.equal(out, decoder(*x))  # deterministic in eval mode
    decoder.train()
    assert not torch.equal(decoder(*x), decoder(*x))  # dropout active while training


# ---------------------------------------------------------------- rotations


def test_euler_matrices_are_rotations():
    angles = torch.randn(50, 3) * 2
    R = euler_to_matrix(angles)
    eye = torch.eye(3).expand(50, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(50), atol=1e-5)


def test_euler_convention_is_x_then_y_then_z():
    a = torch.tensor([0.3, 0.0, 0.0])
    Rx = euler_to_matrix(a)
    assert torch.allclose(Rx[0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(Rx[1:, 1:], torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]]))
    abc = torch.tensor([0.3, -0.7, 1.1])
    composed = (
        euler_to_matrix(torch.tensor([0.3, 0, 0]))
        @ euler_to_matrix(torch.tensor([0, -0.7, 0]))
        @ euler_to_matrix(torch.tensor([0, 0, 1.1]))
    )
    assert torch.allclose(euler_to_matrix(abc), composed, atol=1e-6)


def test_rotate_points_single_and_per_point():
    xyz = torch.randn(7, 3)
    R = euler_to_matrix(torch.randn(3))
    assert torch.allclose(rotate_points(xyz, R), xyz @ R)
    per_point = euler_to_matrix(torch.randn(7, 3))
    expected = torch.stack([xyz[i] @ per_point[i] for i in range(7)])
    assert torch.allclose(rotate_points(xyz, per_point), expected, atol=1e-6)
    assert torch.allclose(rotate_points(xyz, R).norm(dim=1), xyz.norm(dim=1), atol=1e-5)


def test_rotation_gradients_flow():
    angles = torch.randn(4, 3, requires_grad=True)
    xyz = torch.randn(4, 3)
    rotate_points(xyz, euler_to_matrix(angles)).sum().backward()
    assert angles.grad is not None and angles.grad.abs().sum() > 0


# ---------------------------------------------------------------- auto-decoder


def test_autodecoder_codes_rotations_and_forward():
    torch.manual_seed(0)
    model = AutoDecoder(small_cfg(latent_dim=64), n_sequences=200)
    std = model.codes.weight.std().item()
    assert 0.8 / 8 < std < 1.2 / 8  # N(0, 1/sqrt(64))
    angles = model.rotations.angles
    assert angles.shape == (200, 3) and 0.8 * math.pi / 8 < angles.std().item() < 1.2 * math.pi / 8
    seq = torch.tensor([3, 3, 7])
    xyzt = torch.rand(3, 4)
    out = model(seq, xyzt)
    R = model.rotation_matrices()
    expected = model.decoder(model.latent_codes()[seq], torch.cat([rotate_points(xyzt[:, :3], R[seq]), xyzt[:, 3:]], 1))
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    assert model.rotations.angles.grad[3].abs().sum() > 0
    assert model.rotations.angles.grad[0].abs().sum() == 0
    assert not model.latent_codes().requires_grad


def test_autodecoder_without_rotations_is_identity():
    model = AutoDecoder(small_cfg(rotations=False, code_init_std=0.5), n_sequences=3)
    assert model.rotations is None
    assert torch.equal(model.rotation_matrices(), torch.eye(3).expand(3, 3, 3))
    assert 0.2 < model.codes.weight.std().item() < 0.9


# ---------------------------------------------------------------- checkpoints


def make_state(config, model, data_hash="abc"):
    return {
        "format": 1, "epoch": 5, "model": model.state_dict(),
        "optimizer": torch.optim.Adam(model.parameters()).state_dict(),
        "config": config.to_dict(), "data_hash": data_hash, "sequences": ["a", "b"], "frames": [3, 4],
        "data_size": [8, 8, 8], "sdf_factor_min": 2.0, "sdf_factor_max": 3.0, "normalisation": "frame",
        "cellgen_version": "0",
    }


def test_checkpoint_round_trip_weights_only(tmp_path):
    config = load_config("demo", ["model.weight_norm=[1]"])
    model = AutoDecoder(config.model, 2)
    path = tmp_path / "ckpt" / "epoch_000005.pt"
    save_checkpoint(path, make_state(config, model))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    torch.load(path, weights_only=True)  # loads under the safe unpickler
    trained = load_trained_model(tmp_path / "ckpt" / "epoch_000005.pt")
    assert not trained.model.training
    assert trained.config == config
    x = (torch.tensor([0, 1]), torch.rand(2, 4))
    model.eval()
    assert torch.equal(trained.model(*x), model(*x))


def test_load_trained_model_from_experiment_picks_newest(tmp_path):
    from cellgen.layout import ExperimentDir

    config = load_config("demo")
    exp = ExperimentDir(tmp_path)
    for epoch in (10, 30, 20):
        state = make_state(config, AutoDecoder(config.model, 2))
        state["epoch"] = epoch
        save_checkpoint(exp.checkpoint(epoch), state)
    assert load_trained_model(tmp_path).checkpoint["epoch"] == 30


def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a cellgen checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_trained_model(tmp_path)


def test_mismatched_resume_is_refused(tmp_path):
    config = load_config("demo")
    state = make_state(config, AutoDecoder(config.model, 2))
    check_compatible(state, config, "abc", tmp_path)
    with pytest.raises(CheckpointError, match="omega"):
        check_compatible(state, load_config("demo", ["model.omega=20"]), "abc", tmp_path)
    with pytest.raises(CheckpointError, match="another data set"):
        check_compatible(state, config, "other", tmp_path)
    # Training settings may change on resume (e.g. more epochs).
    check_compatible(state, load_config("demo", ["train.epochs=500"]), "abc", tmp_path)


@pytest.mark.parametrize("extra", [{}, {"xyz_in_all": False}, {"weight_norm": [0, 2], "layer_norm": [1]},
                                   {"activation": "relu", "latent_in": [1, 3]}])
def test_indexed_forward_equals_plain_forward_with_gradients(extra):
    torch.manual_seed(0)
    decoder = SdfDecoder(small_cfg(**extra))
    codes = torch.randn(5, 8, requires_grad=True)
    sequence = torch.randint(0, 5, (300,))
    xyzt = torch.rand(300, 4) * 2 - 1
    plain = decoder(codes[sequence], xyzt)
    grads_plain = torch.autograd.grad(plain.square().sum(), [codes, *decoder.parameters()])
    fast = decoder.forward_indexed(codes, sequence, xyzt)
    grads_fast = torch.autograd.grad(fast.square().sum(), [codes, *decoder.parameters()])
    assert torch.allclose(plain, fast, atol=1e-5)
    for a, b in zip(grads_plain, grads_fast):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_indexed_forward_with_one_shared_code():
    torch.manual_seed(0)
    decoder = SdfDecoder(small_cfg(latent_in=[1, 3])).eval()
    code = torch.randn(1, 8)
    xyzt = torch.rand(50, 4)
    expected = decoder(code.expand(50, -1), xyzt)
    assert torch.allclose(decoder.forward_indexed(code, None, xyzt), expected, atol=1e-5)
