"""End to end: a few steps of adapter training on the tiny random backbone, export, reload the
diffusers way, and real bitstreams at two rates."""

import numpy as np
import pytest
import torch

from codec.core.adapters.learned import LearnedAdapter
from codec.core.backbone import build_tiny_backbone
from codec.core.denoise import denoise
from codec.core.diffusion_codec import DiffusionCodec
from codec.train.adapter import ddim_chain, lam_range_arg, train_adapter
from tests.photos import photo

SMALL = dict(hidden=16, hyper_channels=16)  # the tiny backbone needs no more; keeps the test fast


def test_train_export_reload_and_code_at_two_rates(tmp_path):
    photos = [np.asarray(photo(name, width=96)) for name in ("bee", "moss", "wood")]
    out, work = tmp_path / "adapter", tmp_path / "work"
    trained = train_adapter("tiny", photos, out, work, minutes=5, resume=False, device="cpu", crop=64, batch=2,
                            adapter_kwargs=SMALL, max_steps=3, crops_per_photo=2)
    assert torch.load(work / "adapter.pt", weights_only=False)["state"]["step"] == 3
    assert trained.param_net.head[-1].weight.abs().sum() > 0  # initialised to zero: training moved it

    resumed = train_adapter("tiny", photos, out, work, minutes=5, resume=True, device="cpu", crop=64, batch=2,
                            adapter_kwargs=SMALL, max_steps=5, crops_per_photo=2)
    assert torch.load(work / "adapter.pt", weights_only=False)["state"]["step"] == 5
    assert not torch.equal(resumed.param_net.head[-1].weight, trained.param_net.head[-1].weight)

    adapter = LearnedAdapter.from_pretrained(out)
    assert adapter.config == {**resumed.config} and adapter.config["hidden"] == 16
    codec = DiffusionCodec(build_tiny_backbone(seed=0), adapter)
    image = photo("kite", width=96)
    low, high = codec.encode(image, lam=1.0), codec.encode(image, lam=1000.0)
    assert low.mode == high.mode == "learned" and low.bpp < high.bpp
    for result in (low, high):
        decoded = codec.decode(result.data)
        assert decoded.image.size == image.size and decoded.header["t"] == result.t
    again = DiffusionCodec(build_tiny_backbone(seed=0), LearnedAdapter.from_pretrained(out))
    assert again.encode(image, lam=1.0).data == low.data  # the export is all a decoder needs


def test_the_training_loss_decodes_as_the_decoder_does():
    """At an integer t that steps divides, the loss's differentiable DDIM chain is the decoder's own
    (codec.core.denoise), and t still gets a gradient through abar and the UNet's timestep."""
    backbone = build_tiny_backbone(seed=0)
    y_hat = torch.randn(2, backbone.latent_channels, 8, 8)
    for t, steps in ((40, 4), (8, 2), (3, 3)):  # grids of whole steps: the decoder rounds its grid
        expected = denoise(backbone, y_hat, t, steps).latent
        t_cont = torch.full((2,), float(t), requires_grad=True)
        chain = ddim_chain(backbone, y_hat, t_cont, steps)
        torch.testing.assert_close(chain, expected, rtol=1e-4, atol=1e-5)
        chain.sum().backward()
        assert torch.isfinite(t_cont.grad).all() and t_cont.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", ["5", "1,2,3", "a,b", "0,10", "10,1", "1,inf", "nan,5"])
def test_a_bad_lambda_range_is_refused_by_the_command_line(bad, capsys):
    from codec.train.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["adapter", "--data", "nowhere", "--lam-range", bad])
    assert exit_.value.code == 2 and "--lam-range" in capsys.readouterr().err


def test_the_lambda_range_parses_min_and_max():
    assert lam_range_arg("0.3,1e5") == (0.3, 1e5)


@pytest.mark.parametrize("command,option,bad", [
    ("adapter", "--decoder-steps", "-1"), ("adapter", "--decoder-steps", "0"), ("adapter", "--batch", "0"),
    ("adapter", "--crop", "100"), ("adapter", "--crop", "-32"), ("adapter", "--threads", "two"),
    ("adapter", "--hyper-channels", "0"), ("adapter", "--minutes", "nan"), ("adapter", "--lr", "-1e-4"),
    ("backbone", "--vae-minutes", "inf"), ("backbone", "--vae-minutes", "-1"), ("backbone", "--vae-minutes", "0"),
    ("backbone", "--unet-minutes", "0"), ("backbone", "--threads", "0"),
])
def test_a_bad_number_is_a_usage_error_naming_its_option(command, option, bad, capsys):
    """Before, each went on to the training code (a negative --decoder-steps raised a TypeError there)."""
    from codec.train.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--data", "nowhere", option, bad])
    assert exit_.value.code == 2 and option in capsys.readouterr().err
