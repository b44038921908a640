"""stcore.models.embeddings: frozen embeddings of a patch store, cached per encoder and patch size."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from stcore.data import PatchStore
from stcore.models import embeddings, encoders
from stcore.models.embeddings import cache_path, embed, encode_throughput, load_info

N, PX = 10, 32



@pytest.fixture
def store(tmp_path) -> PatchStore:
    """A tiny store laid out like ``extract_patches`` writes it: 10 random 32-px patches."""
    path = tmp_path / "patches-synthetic"
    path.mkdir()
    rng = np.random.default_rng(0)
    np.save(path / "patches.npy", rng.integers(0, 256, (N, PX, PX, 3), dtype=np.uint8))
    np.save(path / "obs_names.npy", np.array([f"S1_{i}x{i}" for i in range(N)]))
    (path / "meta.json").write_text(json.dumps({"out_px": PX, "n": N}))
    return PatchStore.open(path)


class Counter:
    """Wraps ``create_encoder`` and counts the builds and forward calls of the encoders it made."""

    def __init__(self, monkeypatch):
        self.builds, self.forwards = 0, 0
        self._create = encoders.create_encoder
        monkeypatch.setattr(encoders, "create_encoder", self)

    def __call__(self, *args, **kwargs):
        self.builds += 1
        model = self._create(*args, **kwargs)
        model.register_forward_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        return model


def test_embeddings_are_computed_once_then_read_from_the_cache(store, monkeypatch, leftovers):
    counter = Counter(monkeypatch)
    first = embed(store, "shufflenet", size=PX, batch_size=4)
    assert first.shape == (N, 1024) and first.dtype == np.float32 and np.isfinite(first).all()
    assert (counter.builds, counter.forwards) == (1, 3)  # 10 patches in batches of 4
    path = cache_path(store, "shufflenet", size=PX)
    assert path.parent == store.path / "embeddings"
    assert path.name.startswith(f"shufflenet-{PX}-") and path.suffix == ".npy"
    np.testing.assert_array_equal(np.load(path), first)
    info = load_info(path)
    assert info["encoder"]["weights_source"] == "random-init" and info["shape"] == [N, 1024]
    assert not leftovers(store.path)

    again = embed(store, "shufflenet", size=PX, batch_size=4)
    assert (counter.builds, counter.forwards) == (1, 3)  # no recomputation
    np.testing.assert_array_equal(again, first)


def test_rows_follow_the_store_order_and_are_deterministic(store):
    out = embed(store, "resnet18", size=PX, batch_size=4)
    path = cache_path(store, "resnet18", size=PX)
    path.unlink()
    rebatched = embed(store, "resnet18", size=PX, batch_size=3)
    np.testing.assert_allclose(rebatched, out, rtol=1e-4, atol=1e-5)  # same seed, other batches
    path.unlink()
    np.testing.assert_array_equal(embed(store, "resnet18", size=PX, batch_size=4), out)

    torch.manual_seed(embeddings.SEED)
    model = encoders.create_encoder("resnet18")
    spec = encoders.ENCODERS["resnet18"]
    with torch.inference_mode():
        one = model(encoders.preprocess_patches(store.get([store.obs_names[7]]), PX,
                                                mean=spec.mean, std=spec.std))
    np.testing.assert_allclose(out[7], one[0].numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(out[7], out[6])


def test_cache_key_follows_size_and_weights_content(store, tmp_path):
    random = cache_path(store, "shufflenet", size=PX)
    assert cache_path(store, "shufflenet", size=16) != random
    assert cache_path(store, "shufflenet").name.startswith("shufflenet-224-")

    torch.manual_seed(1)
    state = encoders.create_encoder("shufflenet").state_dict()
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(state, a)
    b.write_bytes(a.read_bytes())
    from_a = cache_path(store, "shufflenet", weights=a, size=PX)
    assert from_a != random
    assert from_a == cache_path(store, "shufflenet", weights=b, size=PX)  # content, not path

    with_weights = embed(store, "shufflenet", weights=a, size=PX)
    assert not np.allclose(with_weights, embed(store, "shufflenet", size=PX))
    assert load_info(from_a)["encoder"]["weights_sha256"] == encoders.weights_sha256(a)


def test_packaged_efficientnet_embeddings(store):
    out = embed(store, "efficientnet_lite0", size=PX)
    assert out.shape == (N, 1280)
    path = cache_path(store, "efficientnet_lite0", size=PX)
    assert load_info(path)["encoder"]["weights_source"].startswith("package:efficientnet-lite0")


def test_a_cache_of_the_wrong_shape_is_recomputed(store, caplog):
    path = cache_path(store, "vit_tiny", size=PX)
    path.parent.mkdir()
    np.save(path, np.zeros((3, 192), np.float32))
    with caplog.at_level(logging.WARNING, logger="stcore"):
        out = embed(store, "vit_tiny", size=PX)
    assert out.shape == (N, 192) and "has shape (3, 192), expected (10, 192); recomputing" in caplog.text
    assert np.load(path).shape == (N, 192)


def test_bad_arguments(store):
    with pytest.raises(ValueError, match="unknown encoder 'uni'"):
        embed(store, "uni")
    with pytest.raises(TypeError, match="size must be a positive int, got 0"):
        embed(store, "resnet18", size=0)
    with pytest.raises(TypeError, match="batch_size must be a positive int, got 0"):
        embed(store, "resnet18", size=PX, batch_size=0)


def test_encode_throughput():
    assert encode_throughput("shufflenet", n=4, size=32, batch_size=2) > 0
