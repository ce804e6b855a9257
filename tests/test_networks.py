import pytest
import torch

from skipganomaly.models import SkipGANomaly
from skipganomaly.models.blocks import DCGANDecoder, DCGANEncoder
from skipganomaly.models.objective import LossWeights


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes(size, channels):
    model = SkipGANomaly(size, channels, ngf=4, ndf=4, nz=10).eval()
    x = torch.rand(2, channels, size, size) * 2 - 1
    with torch.no_grad():
        x_hat = model(x)
        logit, features = model.discriminator(x)
        scored = model.score(x, details=True)
    assert x_hat.shape == x.shape
    assert x_hat.abs().max() <= 1.0  # Tanh output
    assert logit.shape == (2,)
    assert features.shape == (2, 10)
    assert scored.score.shape == (2,)
    assert scored.anomaly_map.shape == (2, size, size)
    assert scored.features.shape == (2, 10)


def test_unet_widths_and_bottleneck():
    model = SkipGANomaly(64, 3, ngf=8)
    encoder_widths = [
        [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][0].out_channels
        for block in model.generator.down
    ]
    assert encoder_widths == [8, 16, 32, 64, 64, 64]  # ngf, 2ngf, 4ngf, 8ngf, 8ngf... to 1x1
    skips = []
    h = torch.zeros(1, 3, 64, 64)
    for block in model.generator.down:
        h = block(h)
        skips.append(h.shape[-1])
    assert skips == [32, 16, 8, 4, 2, 1]
    # BatchNorm everywhere in the encoder but the first block and the 1x1 bottleneck.
    has_bn = [
        any(isinstance(m, torch.nn.BatchNorm2d) for m in block.modules()) for block in model.generator.down
    ]
    assert has_bn == [False, True, True, True, True, False]


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    model = SkipGANomaly(32, 3, ngf=8, ndf=8, nz=12).train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    losses = model.training_losses(x, LossWeights(), input_noise_std=0.1)
    groups = model.parameter_groups()
    losses.generator.backward(inputs=groups["generator"], retain_graph=True)
    losses.discriminator.backward(inputs=groups["discriminator"])
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    for value in losses.parts.values():
        assert torch.isfinite(value)


def test_generator_loss_reaches_only_the_generator():
    torch.manual_seed(0)
    model = SkipGANomaly(16, 1, ngf=4, ndf=4, nz=8)
    losses = model.training_losses(torch.rand(4, 1, 16, 16) * 2 - 1, LossWeights())
    losses.generator.backward(inputs=model.parameter_groups()["generator"])
    assert all(p.grad is None for p in model.discriminator.parameters())


def _check_dcgan_init(model, min_conv=5, min_bn=3):
    checked_conv = checked_bn = 0
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and module.weight.numel() >= 2000:
            w = module.weight.detach()
            assert abs(w.mean().item()) < 0.004, name
            assert abs(w.std().item() - 0.02) < 0.002, name
            if module.bias is not None:
                assert torch.all(module.bias == 0), name
            checked_conv += 1
        if isinstance(module, torch.nn.BatchNorm2d) and module.num_features >= 64:
            w = module.weight.detach()
            assert not torch.all(w == 1), name  # PyTorch's default is exactly 1
            assert abs(w.mean().item() - 1.0) < 0.01 and abs(w.std().item() - 0.02) < 0.008, name
            assert torch.all(module.bias == 0), name
            checked_bn += 1
    assert checked_conv >= min_conv and checked_bn >= min_bn


def test_dcgan_init_reaches_every_submodule():
    torch.manual_seed(0)
    model = SkipGANomaly(32, 3, ngf=32, ndf=32, nz=100)
    _check_dcgan_init(model)
    # The first conv would have std ~0.08 under PyTorch's default init; DCGAN gives 0.02.
    first = model.generator.down[0]
    assert abs(first.weight.std().item() - 0.02) < 0.004


def test_reset_discriminator_reinitialises():
    torch.manual_seed(0)
    model = SkipGANomaly(32, 3, ngf=16, ndf=32)
    with torch.no_grad():
        for p in model.discriminator.parameters():
            p.fill_(0.5)
    generator_before = [p.clone() for p in model.generator.parameters()]
    model.reset_discriminator()
    _check_dcgan_init(model.discriminator, min_conv=3, min_bn=2)
    assert all(torch.equal(a, b) for a, b in zip(generator_before, model.generator.parameters(), strict=True))


@pytest.mark.parametrize("size", [16, 32, 64])
def test_dcgan_encoder_decoder_shapes(size):
    enc = DCGANEncoder(size, 3, 8, 20)
    dec = DCGANDecoder(size, 3, 8, 20)
    z = enc(torch.zeros(2, 3, size, size))
    assert z.shape == (2, 20, 1, 1)
    assert dec(z).shape == (2, 3, size, size)


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        SkipGANomaly(48, 3)
    with pytest.raises(ValueError):
        SkipGANomaly(8, 3)
