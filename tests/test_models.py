import pytest
import torch

from bench.models import create_model


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "mobilenetv2", "cnn_small", "cnn_tiny", "resnet_tiny"])
@pytest.mark.parametrize("size", [32, 64])
def test_models_take_unit_pixels_and_expose_features(name, size):
    model = create_model(name, num_classes=5, image_size=size, mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))
    model.eval()
    x = torch.rand(2, 3, size, size)
    logits = model(x)
    assert logits.shape == (2, 5)
    feats = model.features(x)
    assert torch.allclose(model.classifier(feats), logits, atol=1e-5)
    assert model.feature_maps(x).dim() == 4


def test_normalisation_lives_inside_the_model():
    model = create_model("cnn_tiny", num_classes=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(model.normalize(x), (x - 0.5) / 0.25)


def test_imagenet_stem_for_large_inputs():
    model = create_model("resnet18", num_classes=10, image_size=224)
    assert model.net.stem[0].kernel_size == (7, 7)
    assert create_model("resnet18", num_classes=10, image_size=32).net.stem[0].kernel_size == (3, 3)
