"""Pieces shared by the predictors: image backbones, patch tensors, augmentation, spatial graphs.

Image backbones come from :func:`stcore.models.encoders.create_encoder` (``(B, 3, H, W) ->
(B, dim)`` features). Two extra names exist here: ``"tiny"``, a 3-layer CNN (dim 32) for
tests and smoke runs (not a published model), and any other timm model name, built with
``pretrained=False`` (random initialisation; weights are never downloaded).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("stcore.models")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------ backbones
def _tiny_encoder(dim: int = 32):
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim), nn.ReLU(),
        nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())


def build_backbone(name: str, weights=None, size: int = 224, frozen_dim: int | None = None):
    """``(module, dim)``: an image encoder (B, 3, size, size) -> (B, dim).

    With ``frozen_dim`` the inputs are cached frozen embeddings (:func:`image_inputs`), and the
    module is the identity on them.
    """
    import torch

    if frozen_dim is not None:
        return torch.nn.Identity(), int(frozen_dim)
    if name == "tiny":
        if weights is not None:
            raise ValueError("the 'tiny' test encoder has no pretrained weights")
        module = _tiny_encoder()
    else:
        try:
            from . import encoders
        except ImportError:  # the encoder module is not available: plain timm, random init
            encoders = None
        if encoders is not None and name in getattr(encoders, "ENCODERS", {}):
            module = encoders.create_encoder(name, weights=weights)
        else:
            import timm

            if weights is not None:
                raise ValueError(f"encoder {name!r} is not in stcore.models.encoders.ENCODERS; "
                                 "weights can only be given for those")
            try:
                module = timm.create_model(name, pretrained=False, num_classes=0)
            except Exception as err:  # timm raises RuntimeError for unknown names
                known = sorted(getattr(encoders, "ENCODERS", {})) if encoders else []
                raise ValueError(f"unknown image encoder {name!r} (stcore encoders: "
                                 f"{', '.join(known) or 'unavailable'}; or 'tiny', or a timm "
                                 f"model name): {err}") from None
            log.info("encoder %r: timm model with random initialisation", name)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        dim = int(module(torch.zeros(2, 3, size, size)).shape[-1])
    module.train(was_training)
    return module, dim


# -------------------------------------------------------------------------------------- images
def _norm_stats(encoder: str | None):
    """(mean, std) of an encoder of :data:`stcore.models.encoders.ENCODERS` (ImageNet otherwise)."""
    if encoder is not None:
        try:
            from .encoders import ENCODERS
        except ImportError:
            ENCODERS = {}
        if encoder in ENCODERS:
            return tuple(ENCODERS[encoder].mean), tuple(ENCODERS[encoder].std)
    return IMAGENET_MEAN, IMAGENET_STD


def patch_tensor(patches: np.ndarray, idx: np.ndarray, size: int, encoder: str | None = None):
    """Patches ``idx`` as a float tensor (B, 3, size, size): resized (bilinear, antialiased) and
    normalised with the encoder's mean / std (ImageNet for other names or None)."""
    import torch

    images = np.asarray(patches[np.asarray(idx)])
    mean, std = _norm_stats(encoder)
    try:
        from .encoders import preprocess_patches
    except ImportError:
        preprocess_patches = None
    if preprocess_patches is not None:
        return preprocess_patches(images, size, mean=mean, std=std).contiguous()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=True)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous()


def image_inputs(task, rows: np.ndarray, size: int, encoder: str, frozen: bool, gen=None):
    """A batch for an image model: patches (resized, normalised; flipped / rotated when ``gen``
    is given) or, when ``frozen``, the rows of ``task.embeddings[encoder]`` (float tensor)."""
    import torch

    if frozen:
        return torch.as_tensor(np.asarray(task.embedding(encoder)[1][rows], np.float32))
    x = patch_tensor(task.patches, rows, size, encoder)
    return dihedral_augment(x, gen) if gen is not None else x


def frozen_dim(task, encoder: str, frozen: bool) -> int | None:
    """Width of the cached embeddings a frozen model reads (None when not frozen)."""
    return task.embedding(encoder)[1].shape[1] if frozen else None


def dihedral_augment(x, gen, p: float = 0.5):
    """Random horizontal flip, vertical flip and 90° rotation (each with probability ``p``).

    One draw per image from ``gen`` (CPU generator); ``x`` is (B, C, H, W) with H == W.
    """
    import torch

    b = x.shape[0]
    draws = torch.rand((3, b), generator=gen) < p
    out = x
    for i, op in enumerate((lambda t: t.flip(-1), lambda t: t.flip(-2),
                            lambda t: t.rot90(1, (-2, -1)))):
        m = draws[i].to(x.device).view(b, 1, 1, 1)
        out = torch.where(m, op(out), out)
    return out


def dihedral_views(x):
    """The 8 dihedral transforms of (B, C, H, W) images (for test-time averaging)."""
    views = []
    for k in range(4):
        r = x.rot90(k, (-2, -1))
        views += [r, r.flip(-1)]
    return views


def batched(idx: np.ndarray, size: int):
    """Consecutive chunks of ``idx`` of at most ``size``."""
    for start in range(0, len(idx), size):
        yield idx[start:start + size]


# ------------------------------------------------------------------------------------ sections
def section_groups(slide: np.ndarray, idx: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``[(section, rows of idx in that section)]`` in order of first appearance."""
    idx = np.asarray(idx)
    out = []
    seen = {}
    for s in slide[idx]:
        seen.setdefault(s, None)
    for s in seen:
        out.append((s, idx[slide[idx] == s]))
    return out


def grid_positions(coords: np.ndarray, slide: np.ndarray, n_pos: int,
                   name: str = "model") -> np.ndarray:
    """Integer (x, y) positions: array coordinates rounded, shifted to start at 0 per section,
    clipped to ``n_pos - 1`` (with a warning)."""
    pos = np.rint(coords).astype(np.int64)
    for s in np.unique(slide):
        m = slide == s
        pos[m] -= pos[m].min(axis=0)
    if pos.max(initial=0) >= n_pos:
        log.warning("%s: array coordinates span up to %d, clipped to n_pos - 1 = %d", name,
                    pos.max(), n_pos - 1)
        pos = np.minimum(pos, n_pos - 1)
    return pos


# -------------------------------------------------------------------------------------- graphs
def knn_adjacency(coords: np.ndarray, k: int, max_dist: float | None = None) -> np.ndarray:
    """Dense (n, n) 0/1 adjacency: each spot's ``k`` nearest other spots, pruned beyond
    ``max_dist`` (Hist2ST's ``calcADJ``; no self loops, not symmetrised)."""
    from scipy.spatial import cKDTree

    n = len(coords)
    adj = np.zeros((n, n), dtype=np.float32)
    kq = min(k + 1, n)
    if kq <= 1:
        return adj
    dist, nb = cKDTree(coords).query(coords, k=kq)
    dist, nb = dist.reshape(n, kq), nb.reshape(n, kq)
    for i in range(n):
        for d, j in zip(dist[i], nb[i]):
            if j != i and (max_dist is None or d <= max_dist + 1e-9):
                adj[i, j] = 1.0
    return adj


def is_hex_geometry(coords: np.ndarray) -> bool:
    """Visium-like hexagonal array: (col + row) has one parity throughout every section."""
    c = np.rint(coords).astype(np.int64)
    parity = (c[:, 0] + c[:, 1]) % 2
    return len(c) > 1 and bool(np.all(parity == parity[0]))


def grid_neighbours(coords: np.ndarray, slide: np.ndarray, hex_geometry: bool) -> list[np.ndarray]:
    """Direct neighbours of each spot within its section on the array grid.

    Hexagonal (Visium) arrays: the 6 spots at (col ± 2, row) and (col ± 1, row ± 1); square
    grids (legacy ST): the 8 spots at Chebyshev distance 1 (squidpy ``coord_type="grid",
    n_neighs=8`` as SEPAL uses).
    """
    from scipy.spatial import cKDTree

    c = np.rint(coords).astype(np.float64)
    if hex_geometry:
        c = c * np.array([1.0, np.sqrt(3.0)])  # hexagonal lattice: all 6 neighbours at 2
        radius, p = 2.0 + 1e-6, 2
    else:
        radius, p = 1.0 + 1e-6, np.inf
    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(c)
    for s in np.unique(slide):
        rows = np.flatnonzero(slide == s)
        tree = cKDTree(c[rows])
        for i, nbrs in zip(rows, tree.query_ball_point(c[rows], r=radius, p=p)):
            out[i] = np.array(sorted(rows[j] for j in nbrs if rows[j] != i), dtype=np.int64)
    return out


def n_hop_subgraphs(neighbours: list[np.ndarray], n_hops: int) -> list[np.ndarray]:
    """For each spot: itself first, then every spot within ``n_hops`` hops (sorted)."""
    out = []
    for i in range(len(neighbours)):
        seen, frontier = {i}, {i}
        for _ in range(n_hops):
            frontier = {int(j) for f in frontier for j in neighbours[f]} - seen
            seen |= frontier
        out.append(np.array([i] + sorted(seen - {i}), dtype=np.int64))
    return out


# ---------------------------------------------------------------------------- section models
def _section_predictor_base():
    from .base import NeuralPredictor

    return NeuralPredictor


class SectionPredictor(_section_predictor_base()):
    """A model whose input is a whole section (HisToGene, Hist2ST): one section = one sequence.

    Training items are the sections with train spots; a step draws ``batch_size`` sections
    (default 1, as the papers) and averages their losses; a section's sequence holds its train
    spots only. Prediction runs each requested section once with **all** its spots as context
    (inputs are images and coordinates only, never expression) and returns the requested rows.
    Subclasses implement ``_build(task)``, ``_section_loss(net, task, rows, gen)`` and
    ``_section_forward(net, task, rows) -> (len(rows), G) tensor``; their net's ``gene_head``
    ends with the output Linear, whose bias starts at the training mean when the subclass sets
    ``init_bias_mean`` (not in the papers; short CPU runs otherwise spend their steps on it).
    """

    def _fit(self, task, seed: int, progress: bool) -> None:
        import torch

        from ..train import seeded

        dev = self._device()
        with seeded(seed, dev):
            self.net_ = self._build(task).to(dev)
        if getattr(self, "init_bias_mean", False):
            from .base import train_mean

            with torch.no_grad():
                self.net_.gene_head[-1].bias.copy_(torch.as_tensor(
                    train_mean(task, self.masked_loss), device=dev))
        sections = [rows for _, rows in section_groups(task.slide, np.flatnonzero(task.train))]

        def loss_fn(net, idx, gen):
            return torch.stack([self._section_loss(net, task, sections[i], gen)
                                for i in idx.tolist()]).mean()

        self._train(task, loss_fn, len(sections), seed=seed, progress=progress)

    def _predict(self, task, idx: np.ndarray) -> np.ndarray:
        import torch

        self.net_.eval()
        out = np.empty((len(idx), task.n_genes), dtype=np.float32)
        with torch.no_grad():
            for s, _ in section_groups(task.slide, idx):
                context = np.flatnonzero(task.slide == s)
                pred = self._section_forward(self.net_, task, context).float().cpu().numpy()
                where = np.flatnonzero(task.slide[idx] == s)
                out[where] = pred[np.searchsorted(context, idx[where])]
        return out
