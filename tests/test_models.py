import pytest
import torch

from dimat_bench.models import MODELS, check_model_name, create_model
from dimat_bench.registry import ConfigError

# (name, kwargs, input sizes it is meant for): every registered model plus one timm model.
CASES = [(name, {}, (32, 64)) for name in MODELS.names()] + [("resnet20", {"width": 2}, (32, 64)),
                                                             ("timm:resnet10t", {}, (32, 64))]


@pytest.mark.parametrize("name,kwargs,sizes", CASES)
def test_forward_shapes(name, kwargs, sizes):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **kwargs).eval()
    for size in sizes:
        with torch.no_grad():
            out = model(torch.randn(2, 3, size, size))
        assert out.shape == (2, 7)
        assert torch.isfinite(out).all()


def test_registry_is_covered():
    assert {"resnet20", "vgg16_bn", "resnet50"} <= set(MODELS.names())


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_width8_matches_the_papers_size():
    model = create_model("resnet20", 100, width=8)
    # With 3x3-conv shortcuts the conv weights alone are 18,582,912 (1x1 ones would give 17.2 M).
    convs = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert convs == 18_582_912
    assert 18.6e6 < parameter_count(model) < 18.7e6


def test_resnet20_shortcuts_are_3x3_conv_with_bn():
    model = create_model("resnet20", 10)
    for stage in (model.layer2, model.layer3):
        conv, bn = stage[0].shortcut
        assert conv.kernel_size == (3, 3) and conv.stride == (2, 2) and isinstance(bn, torch.nn.BatchNorm2d)
    assert len(model.layer1[0].shortcut) == 0


def test_vgg16_bn_has_13_conv_bn_relu_units_and_one_linear_head():
    model = create_model("vgg16_bn", 10, width=1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 13 and len(bns) == 13 and len(linears) == 1
    assert create_model("vgg16_bn", 10, width=2).features[1].num_features == 128


def test_bad_model_names_and_widths_fail_clearly():
    with pytest.raises(ConfigError, match="model: got 'resnet21'.*did you mean 'resnet20'"):
        create_model("resnet21", 10)
    with pytest.raises(ConfigError, match="width: got 2; allowed: 1 for resnet50"):
        create_model("resnet50", 10, width=2)
    with pytest.raises(ConfigError, match="timm:<name>"):
        check_model_name("timm:not_a_model")
    check_model_name("timm:resnet18")
