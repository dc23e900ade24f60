"""EfficientNet-Lite0: checkpoint mapping, TF "SAME" padding, and real-photo predictions."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from imgsearch.models.efficientnet import (
    EFFICIENTNET_LITE0_PREPROCESS,
    Conv2dSame,
    EfficientNetLite,
    _default_weights_path,
    _same_pad,
    load_efficientnet_lite0,
)
from imgsearch.models.offline import imagenet_classes

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
MISSILES = {657, 744}  # missile; projectile, missile (ImageNet has no "rocket" class)


@pytest.fixture(scope="module")
def checkpoint() -> OrderedDict[str, torch.Tensor]:
    return torch.load(_default_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model() -> EfficientNetLite:
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    images = [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]
    crops = np.stack([EFFICIENTNET_LITE0_PREPROCESS(image) for image in images])
    return EFFICIENTNET_LITE0_PREPROCESS.normalize(crops)


@pytest.fixture(scope="module")
def outputs(model: EfficientNetLite, photos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        features = model.forward_features(photos)
        return features, model.classify(features)


@pytest.fixture(scope="module")
def probs(outputs: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(zip(PHOTOS, outputs[1].softmax(-1)))


def _top(p: torch.Tensor, k: int) -> list[int]:
    return p.topk(k).indices.tolist()


def test_all_checkpoint_tensors_loaded_in_order(
    checkpoint: OrderedDict[str, torch.Tensor], model: EfficientNetLite
) -> None:
    state = model.state_dict()
    assert len(checkpoint) == len(state) == 296
    for (src, expected), (dst, loaded) in zip(checkpoint.items(), state.items()):
        assert src.rsplit(".", 1)[-1] == dst.rsplit(".", 1)[-1], (src, dst)
        assert torch.equal(expected, loaded), (src, dst)
    assert not model.training


def test_block_zero_has_no_expansion(model: EfficientNetLite) -> None:
    assert model.blocks[0].expand is None
    assert all(block.expand is not None for block in model.blocks[1:])
    assert len(model.blocks) == 16
    assert [block.residual for block in model.blocks].count(True) == 9


def test_mismatched_checkpoint_is_refused(
    checkpoint: OrderedDict[str, torch.Tensor], tmp_path: Path
) -> None:
    missing = OrderedDict(checkpoint)
    missing.popitem()
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="296"):
        load_efficientnet_lite0(str(tmp_path / "missing.pth"))

    reshaped = OrderedDict(checkpoint)
    reshaped["_fc.weight"] = reshaped["_fc.weight"][:, :1000]
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError, match="_fc.weight"):
        load_efficientnet_lite0(str(tmp_path / "reshaped.pth"))


def test_same_padding_is_tensorflow_s() -> None:
    assert _same_pad(224, 3, 2, 1) == (0, 1)  # extra pixel goes after, as in TF
    assert _same_pad(112, 5, 2, 1) == (1, 2)
    assert _same_pad(225, 3, 2, 1) == (1, 1)
    assert _same_pad(56, 5, 1, 1) == (2, 2)
    conv = Conv2dSame(3, 4, 3, stride=2)
    x = torch.randn(1, 3, 10, 10)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)


def test_feature_and_logit_shapes(outputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    features, logits = outputs
    assert features.shape == (len(PHOTOS), 1280)
    assert logits.shape == (len(PHOTOS), 1000)
    assert torch.isfinite(features).all()
    assert (features >= 0).all()  # pooled ReLU6 outputs
    assert (features <= 6).all()


def test_batch_matches_single_images(
    model: EfficientNetLite, photos: torch.Tensor, outputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    with torch.inference_mode():
        pair = model.forward_features(photos[:2])
        singles = torch.cat([model.forward_features(photos[i : i + 1]) for i in range(2)])
        logits = model.classify(pair)
        forward = model(photos[:1])
    torch.testing.assert_close(pair, singles, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pair, outputs[0][:2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, outputs[1][:2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(forward, logits[:1], atol=1e-4, rtol=1e-4)


def test_fused_model_gives_same_outputs(
    photos: torch.Tensor, outputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    fused = load_efficientnet_lite0(fuse=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.inference_mode():
        features = fused.forward_features(photos)
        logits = fused.classify(features)
    torch.testing.assert_close(features, outputs[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(logits, outputs[1], atol=1e-3, rtol=1e-3)


def test_cat_photo(probs: dict[str, torch.Tensor]) -> None:
    p = probs["chelsea"]
    assert _top(p, 1)[0] in CATS
    assert len(CATS & set(_top(p, 5))) >= 3  # observed: tiger cat, Egyptian cat, tabby
    assert p[list(CATS)].sum() > 0.8


def test_coffee_photo(probs: dict[str, torch.Tensor]) -> None:
    p = probs["coffee"]
    assert _top(p, 1) == [967]  # espresso, observed p ~ 0.95
    assert p[967] > 0.8
    assert {968, 504} & set(_top(p, 5))  # cup or coffee mug


def test_rocket_photo(probs: dict[str, torch.Tensor]) -> None:
    p = probs["rocket"]
    assert set(_top(p, 2)) == MISSILES
    assert p[list(MISSILES)].sum() > 0.4


def test_astronaut_photo(probs: dict[str, torch.Tensor]) -> None:
    # No ImageNet class fits the portrait; the space helmet in the corner gives "football
    # helmet" (observed top-1, p ~ 0.16). The prediction is uncertain, and should say so.
    p = probs["astronaut"]
    assert 560 in _top(p, 5)
    assert p.max() < 0.5


def test_class_names_agree(probs: dict[str, torch.Tensor]) -> None:
    names = imagenet_classes()  # the package's own list, used to name the classes
    assert len(names) == 1000 and names[967] == "espresso" and names[281] == "tabby cat"
    assert "cat" in names[_top(probs["chelsea"], 1)[0]]
