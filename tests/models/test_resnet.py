"""``modify.models.ResNet`` against Hugging Face's ``ResNetForImageClassification`` and torchvision's outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

import modify
from helpers import assert_state_equal, state_snapshot
from modify.models import BasicBlock, Bottleneck, ResNet, ResNetConfig, resnet18, resnet34, resnet50
from modify.models.resnet import HF_KEYS

DATA = Path(__file__).parent.parent / "data" / "torchvision_resnet.json"
VARIANTS = {
    "basic": dict(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16, 24], depths=[2, 1, 1]),
    "bottleneck": dict(layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2]),
    "bottleneck v1, strided first stage": dict(
        layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32], depths=[2, 1],
        downsample_in_bottleneck=True, downsample_in_first_stage=True,
    ),
}  # fmt: skip


def make_reference(**config) -> transformers.ResNetForImageClassification:
    """A random ResNet with non-trivial batch norms: random affine parameters and running statistics."""
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(transformers.ResNetConfig(num_labels=5, **config)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bias")) or (".normalization." in name and name.endswith("weight")):
                t.copy_(t + 0.2 * torch.randn(t.shape, generator=gen))
            elif name.endswith("num_batches_tracked"):
                t.fill_(7)
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    reference = make_reference(**VARIANTS[request.param])
    folder = tmp_path_factory.mktemp("resnet")
    reference.save_pretrained(folder)
    return request.param, reference, folder


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 48, 40, generator=torch.Generator().manual_seed(2))


def test_folder_logits_match_reference(variant, images):
    name, reference, folder = variant
    resnet = ResNet.from_pretrained(folder)
    assert not resnet.training and resnet.config.num_classes == 5
    expected = reference(images).logits
    torch.testing.assert_close(resnet(images), expected, atol=1e-5, rtol=0)
    fresh = ResNet(resnet.config).eval()
    assert (fresh(images) - expected).abs().max() > 0.1  # the weights, not the init, make the match


def test_parameter_and_buffer_counts_equal_reference(variant):
    name, reference, folder = variant
    resnet = ResNet.from_pretrained(folder)
    assert sum(p.numel() for p in resnet.parameters()) == sum(p.numel() for p in reference.parameters())
    assert sum(b.numel() for b in resnet.buffers()) == sum(b.numel() for b in reference.buffers())
    torch.testing.assert_close(resnet.embedder.bn.norm.num_batches_tracked, torch.tensor(7))


def test_training_mode_matches_outputs_gradients_and_running_statistics(images):
    reference = make_reference(**VARIANTS["bottleneck"])
    resnet = ResNet.from_pretrained(reference.state_dict(), num_classes=5, **VARIANTS["bottleneck"])
    reference.train(), resnet.train()
    labels = torch.tensor([0, 3, 4])
    outputs = resnet(images), reference(images).logits
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    for out in outputs:
        F.cross_entropy(out, labels).backward()
    ref_state, ref_params = reference.state_dict(), dict(reference.named_parameters())
    for key, value in resnet.state_dict().items():
        torch.testing.assert_close(value, ref_state[HF_KEYS.reference_key(key)], atol=1e-6, rtol=1e-5, msg=key)
    for key, p in resnet.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[HF_KEYS.reference_key(key)].grad, atol=1e-6, rtol=1e-4, msg=key)


def test_bin_folder_file_and_state_dict_sources(tmp_path, images):
    reference = make_reference(**VARIANTS["basic"])
    expected = reference(images).logits
    reference.config.to_json_file(tmp_path / "config.json")  # transformers 4's pytorch_model.bin layout
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    keywords = dict(num_classes=5, **VARIANTS["basic"])
    sources = ((tmp_path, {}), (tmp_path / "pytorch_model.bin", keywords), (reference.state_dict(), keywords))
    for source, kwargs in sources:
        torch.testing.assert_close(ResNet.from_pretrained(source, **kwargs)(images), expected, atol=1e-5, rtol=0)


def torchvision_case(arch: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """torchvision's state dict, input and logits, regenerated as ``tests/data``'s README describes."""
    case = json.loads(DATA.read_text())["models"][arch]
    gen, state = torch.Generator().manual_seed(case["weights_seed"]), {}
    for key, shape in case["state_dict_keys_and_shapes"]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) * 0.5 + 0.75
        elif key.endswith("running_mean"):
            state[key] = torch.randn(shape, generator=gen) * 0.1
        elif key.endswith("weight") and len(shape) > 1:
            state[key] = torch.randn(shape, generator=gen) * math.sqrt(2 / math.prod(shape[1:]))
        elif key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    images = torch.randn(case["input_shape"], generator=torch.Generator().manual_seed(case["input_seed"]))
    return state, images, torch.tensor(case["logits"])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_from_torchvision_matches_torchvision_logits(arch, tmp_path):
    state, images, expected = torchvision_case(arch)
    torch.save(state, tmp_path / f"{arch}.pth")
    resnet = ResNet.from_torchvision(tmp_path / f"{arch}.pth", arch, num_classes=10)
    torch.testing.assert_close(resnet(images), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert sum(p.numel() for p in resnet.parameters()) == torchvision_parameter_count(arch)


def test_from_torchvision_accepts_checkpoints_without_num_batches_tracked():
    state, images, expected = torchvision_case("resnet18")
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # before PyTorch 0.4.1
    resnet = ResNet.from_torchvision(old, "resnet18", num_classes=10)
    torch.testing.assert_close(resnet(images), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def torchvision_parameter_count(arch: str) -> int:
    shapes = json.loads(DATA.read_text())["models"][arch]["state_dict_keys_and_shapes"]
    return sum(math.prod(shape) for key, shape in shapes if key.endswith(("weight", "bias")))


def test_constructors_build_the_torchvision_layouts():
    for make, arch in ((resnet18, "resnet18"), (resnet50, "resnet50")):
        assert sum(p.numel() for p in make(num_classes=10).parameters()) == torchvision_parameter_count(arch)
    model = resnet34(num_classes=7, num_channels=1)
    assert model.config.depths == (3, 4, 6, 3) and model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 7)


def test_trait_queries_find_blocks_projections_and_norms():
    resnet = ResNet(ResNetConfig(**VARIANTS["basic"], num_classes=5))
    assert modify.select(resnet, BasicBlock).paths() == ["stages.0.0", "stages.0.1", "stages.1.0", "stages.2.0"]
    shortcuts = modify.select(resnet, modify.Conv2d, "*.shortcut.*").paths()
    assert shortcuts == ["stages.1.0.branches.shortcut.conv", "stages.2.0.branches.shortcut.conv"]
    convs = modify.select(resnet, modify.Conv2d)
    assert len(convs) == len(modify.select(resnet, modify.BatchNorm2d)) == 1 + 2 * 4 + 2
    assert all(modify.traits.Param in modify.traits_of(m) for m in convs.modules())
    affines = modify.select(resnet, modify.ElementwiseAffine)
    assert all(m.dim == 1 for m in affines.modules()) and len(affines) == len(convs)
    assert modify.select(resnet, modify.Linear).paths() == ["head.fc"]
    assert len(modify.select(ResNet(ResNetConfig(**VARIANTS["bottleneck"])), Bottleneck)) == 3


def test_lora_sibling_equals_base_at_init(images):
    resnet = ResNet(ResNetConfig(**VARIANTS["basic"], num_classes=5)).eval()
    before = state_snapshot(resnet)
    adapted = modify.lora(resnet, rank=2)
    assert isinstance(adapted, ResNet) and modify.select(adapted, modify.LoRA).paths() == ["head.fc"]
    torch.testing.assert_close(adapted(images), resnet(images), atol=0, rtol=0)
    assert {id(p) for p in resnet.parameters()} <= {id(p) for p in adapted.parameters()}
    assert_state_equal(resnet, before)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(layer_type="wide"), ValueError, "layer_type must be"),
        (dict(depths=(1,)), ValueError, "of one length"),
        (dict(hidden_sizes=(16, 30), layer_type="bottleneck"), ValueError, "multiples of 4"),
        (dict(num_classes=0), ValueError, "num_classes must be positive"),
        (dict(depths=(1, "2")), TypeError, "field 'depths'"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        ResNetConfig(**{"hidden_sizes": (16, 32), "depths": (1, 1), **kwargs})


def test_from_torchvision_rejects_unknown_arch_and_folders(tmp_path):
    with pytest.raises(ValueError, match="arch must be one of"):
        ResNet.from_torchvision({}, "resnet101")
    with pytest.raises(IsADirectoryError, match="expected a weights file or a state_dict"):
        ResNet.from_torchvision(tmp_path)
