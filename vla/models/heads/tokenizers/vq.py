"""Residual-VQ action tokenizer (VQ-VLA, Wang et al. 2025): windows of W steps -> L codes each.

A normalized chunk (H, D) is cut into H / W windows of W steps. Each window (W * D values) goes
through a small MLP encoder to a latent z; a residual vector quantizer picks, level by level, the
nearest of K codes to what the levels before it left unexplained (levels run coarse to fine, not
in time); the decoder maps the sum of the chosen codes back to a window. A chunk is
``H / W * L`` tokens, window-major, and level ``l``'s code ``c`` is local id ``l * K + c``, so
each level owns its own K ids.

Fitting (``fit``) trains the encoder, decoder and codebooks with torch on CPU: an autoencoder
warm-up without quantization, k-means codebooks on the warm latents (residual by residual), then
reconstruction MSE + codebook + commitment losses with straight-through gradients, restarting
codes no window chose on residuals of the batch. After fitting everything is frozen: encode and
decode are float64 numpy (deterministic, CPU), and the weights are stored as lists of floats in
the JSON state, so a checkpoint carries the tokenizer exactly like FAST.

Decoding never raises on a malformed sequence: extra tokens are dropped, missing tokens add
nothing at their level (a truncated sequence decodes to a coarser chunk) and a code outside its
level's range is clipped into it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.special

from vla.models.heads.tokenizers.base import ActionTokenizer, ActionTokenizerConfig

# The linear layers of the encoder and decoder, in order (their sizes: `_layer_shapes`).
_ENCODER = ("enc0", "enc1", "enc2")
_DECODER = ("dec0", "dec1", "dec2")


def _layer_shapes(cfg: VQTokenizerConfig, action_dim: int) -> dict[str, tuple[int, int]]:
    """name -> (out, in) of each linear layer; both MLPs have two SiLU hidden layers."""
    x, h, z = cfg.window * action_dim, cfg.hidden, cfg.latent_dim
    return {"enc0": (h, x), "enc1": (h, h), "enc2": (z, h), "dec0": (h, z), "dec1": (h, h), "dec2": (x, h)}


def _mlp(x: np.ndarray, weights: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """(N, in) -> (N, out): linear, SiLU, linear, SiLU, linear (the torch modules of `fit`, in numpy)."""
    for i, name in enumerate(names):
        x = x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]
        if i < len(names) - 1:
            x = x * scipy.special.expit(x)  # SiLU
    return x


class VQTokenizer(ActionTokenizer):
    name = "vq"

    def __init__(self, config: VQTokenizerConfig | None = None):
        self.config = config or VQTokenizerConfig()
        self.action_dim: int | None = None
        self.weights: dict[str, np.ndarray] = {}  # encoder/decoder layers, float64 for inference
        self.codebooks: np.ndarray | None = None  # (L, K, latent_dim)

    # ---- properties -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.levels * self.config.codes

    @property
    def is_fitted(self) -> bool:
        return self.codebooks is not None

    def tokens_per_chunk(self, horizon: int) -> int:
        self.check_horizon(horizon)
        return horizon // self.config.window * self.config.levels

    def check_horizon(self, horizon: int) -> None:
        if horizon < 1 or horizon % self.config.window:
            raise ValueError(
                f"vq tokenizer: the chunk length H={horizon} is not a multiple of the window W={self.config.window}; "
                "choose policy.chunk_size or the tokenizer's window so that W divides H"
            )

    def check_shape(self, horizon: int, action_dim: int) -> None:
        """H must be a multiple of W, and D the fitted action width (when fitted)."""
        self.check_horizon(horizon)
        if self.action_dim is not None and action_dim != self.action_dim:
            raise ValueError(f"vq tokenizer: fitted on action_dim D={self.action_dim}, asked for D={action_dim}")

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                "vq tokenizer is not fitted: call fit(chunks) (or head.fit_tokenizer / `vla data fit-tokenizer --type vq`)"
            )

    def _windows(self, chunks: np.ndarray) -> np.ndarray:
        """(N, H, D) -> (N * H/W, W * D) windows, in chunk then time order."""
        n, h, d = chunks.shape
        self.check_shape(h, d)
        return chunks.reshape(n * (h // self.config.window), self.config.window * d)

    # ---- the quantizer (numpy, frozen) ------------------------------------------------
    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """(N, W*D) windows -> (N, L) codes: each level quantizes the residual the levels before it left."""
        residual = _mlp(np.asarray(windows, dtype=np.float64), self.weights, _ENCODER)  # (N, latent)
        codes = np.empty((len(residual), self.config.levels), dtype=np.int64)
        for level, book in enumerate(self.codebooks):  # book: (K, latent)
            dist = (residual**2).sum(1, keepdims=True) - 2 * residual @ book.T + (book**2).sum(1)[None]  # (N, K)
            codes[:, level] = dist.argmin(1)
            residual = residual - book[codes[:, level]]
        return codes

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """(N, L) codes -> (N, W*D) windows; a code of -1 adds nothing at its level."""
        codes = np.asarray(codes, dtype=np.int64)
        latent = np.zeros((len(codes), self.config.latent_dim))
        for level, book in enumerate(self.codebooks):
            present = codes[:, level] >= 0
            latent[present] += book[codes[present, level]]
        return _mlp(latent, self.weights, _DECODER)

    # ---- encode / decode --------------------------------------------------------------
    def encode(self, chunk: np.ndarray) -> list[int]:
        self._require_fitted()
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2:
            raise ValueError(f"vq tokenizer encode: expected one chunk (H, D), got {chunk.shape}")
        codes = self.encode_windows(self._windows(chunk[None]))  # (H/W, L)
        local = codes + np.arange(self.config.levels)[None] * self.config.codes  # level l owns [l*K, (l+1)*K)
        return local.reshape(-1).tolist()  # window-major, coarse level first

    def decode(self, tokens, horizon: int, action_dim: int) -> np.ndarray:
        self._require_fitted()
        self.check_shape(horizon, action_dim)
        n_windows, levels, k = horizon // self.config.window, self.config.levels, self.config.codes
        ids = np.asarray(list(tokens), dtype=np.int64).reshape(-1)[: n_windows * levels]
        codes = np.full(n_windows * levels, -1, dtype=np.int64)  # missing tokens: -1, no contribution
        level_of = np.arange(ids.size) % levels
        codes[: ids.size] = np.clip(ids - level_of * k, 0, k - 1)  # a code outside its level's ids is clipped in
        windows = self.decode_codes(codes.reshape(n_windows, levels))  # (H/W, W*D)
        return windows.reshape(horizon, action_dim).astype(np.float32)

    # ---- fitting ----------------------------------------------------------------------
    def fit(self, chunks: np.ndarray) -> VQTokenizer:
        chunks = np.asarray(chunks, dtype=np.float64)
        if chunks.ndim != 3 or chunks.shape[0] == 0:
            raise ValueError(f"vq tokenizer fit: chunks must be (N, H, D) with N > 0, got {chunks.shape}")
        if not np.isfinite(chunks).all():
            raise ValueError("vq tokenizer fit: chunks contain NaN or inf")
        self.check_horizon(chunks.shape[1])
        self.action_dim = chunks.shape[2]
        weights, codebooks = _train(
            self._windows(chunks).astype(np.float32), self.config, _layer_shapes(self.config, self.action_dim)
        )
        self.weights = {name: w.astype(np.float64) for name, w in weights.items()}
        self.codebooks = codebooks.astype(np.float64)
        return self

    # ---- state ------------------------------------------------------------------------
    def params(self) -> dict:
        fitted = {
            "action_dim": self.action_dim,
            "weights": {name: w.astype(np.float32).tolist() for name, w in self.weights.items()},
            "codebooks": None if self.codebooks is None else self.codebooks.astype(np.float32).tolist(),
        }
        return {**dataclasses.asdict(self.config), **fitted}

    @classmethod
    def from_params(cls, params: dict) -> VQTokenizer:
        names = {f.name for f in dataclasses.fields(VQTokenizerConfig)}
        tok = cls(VQTokenizerConfig(**{k: v for k, v in params.items() if k in names}))
        tok.action_dim = params.get("action_dim")
        tok.weights = {name: np.asarray(w, dtype=np.float64) for name, w in (params.get("weights") or {}).items()}
        books = params.get("codebooks")
        tok.codebooks = None if books is None else np.asarray(books, dtype=np.float64)
        return tok


# ---- fitting (torch, CPU) ------------------------------------------------------------------
_KMEANS_POINTS = 20_000  # latents the k-means initialization clusters (a random subset beyond that)
_KMEANS_ITERS = 20
_RESTART_EVERY = 100  # steps between restarts of codes no window chose; none in the last tenth of fitting


def _kmeans(x, k: int, generator):
    """(N, Z) points -> (K, Z) centers after Lloyd iterations from K random points (with repeats when N < K);
    an empty cluster keeps its center."""
    import torch

    n = len(x)
    start = torch.randint(n, (k,), generator=generator) if n < k else torch.randperm(n, generator=generator)[:k]
    centers = x[start].clone()
    for _ in range(_KMEANS_ITERS):
        assign = torch.cdist(x, centers).argmin(1)  # (N,)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)[:, None]
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
    return centers


def _train(windows: np.ndarray, cfg: VQTokenizerConfig, shapes: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fit encoder, decoder and residual codebooks on (N, W*D) windows; returns numpy weights and (L, K, Z) codebooks.

    Runs on CPU with its own seeded RNG (the global torch RNG is left as it was), so every rank of a
    distributed run fits the same tokenizer.
    """
    import torch
    import torch.nn.functional as F

    with torch.random.fork_rng(devices=[]), torch.device("cpu"):  # CPU even under a GPU default device
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        x = torch.from_numpy(windows).float()  # (N, W*D)
        layers = {name: torch.nn.Linear(i, o) for name, (o, i) in shapes.items()}

        def mlp(h, names):
            for j, name in enumerate(names):
                h = layers[name](h)
                h = F.silu(h) if j < len(names) - 1 else h
            return h

        def batch():
            return x[torch.randint(len(x), (cfg.batch_size,), generator=gen)]

        params = [p for layer in layers.values() for p in layer.parameters()]
        warmup = cfg.fit_steps // 5
        opt = torch.optim.Adam(params, lr=cfg.lr)
        for _ in range(warmup):  # a plain autoencoder first, so k-means clusters meaningful latents
            xb = batch()
            loss = F.mse_loss(mlp(mlp(xb, _ENCODER), _DECODER), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()

        with torch.no_grad():  # k-means codebooks, level by level on what the coarser levels leave
            residual = mlp(x[torch.randperm(len(x), generator=gen)[:_KMEANS_POINTS]], _ENCODER)
            books = []
            for _ in range(cfg.levels):
                books.append(_kmeans(residual, cfg.codes, gen))
                residual = residual - books[-1][torch.cdist(residual, books[-1]).argmin(1)]
        codebooks = torch.nn.Parameter(torch.stack(books))  # (L, K, Z)

        steps = cfg.fit_steps - warmup
        opt = torch.optim.Adam([*params, codebooks], lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
        usage = torch.zeros(cfg.levels, cfg.codes)
        for step in range(steps):
            xb = batch()
            z = mlp(xb, _ENCODER)  # (B, Z)
            residual, quantized, vq_loss, residuals = z, torch.zeros_like(z), 0.0, []
            for level in range(cfg.levels):
                residuals.append(residual.detach())
                code = torch.cdist(residual.detach(), codebooks[level].detach()).argmin(1)  # (B,)
                chosen = codebooks[level][code]  # (B, Z)
                usage[level] += torch.bincount(code, minlength=cfg.codes)
                vq_loss = vq_loss + F.mse_loss(chosen, residual.detach())  # codes move towards the residuals
                vq_loss = vq_loss + cfg.commitment * F.mse_loss(residual, chosen.detach())  # and the encoder commits
                quantized = quantized + chosen
                residual = residual - chosen.detach()
            z_q = z + (quantized - z).detach()  # straight-through: the decoder's gradient reaches the encoder
            loss = F.mse_loss(mlp(z_q, _DECODER), xb) + vq_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            if (step + 1) % _RESTART_EVERY == 0:
                if step < 0.9 * steps:
                    _restart_dead_codes(codebooks, usage, residuals, gen)
                usage.zero_()

    weights = {
        f"{name}.{k}": v.detach().numpy().copy()
        for name, layer in layers.items()
        for k, v in layer.state_dict().items()
    }
    return weights, codebooks.detach().numpy().copy()


def _restart_dead_codes(codebooks, usage, residuals: list, generator) -> None:
    """Codes no window chose since the last restart move onto random residuals of the last batch at their level."""
    import torch

    with torch.no_grad():
        for level, residual in enumerate(residuals):
            dead = (usage[level] == 0).nonzero().flatten()
            if len(dead):
                pick = torch.randint(len(residual), (len(dead),), generator=generator)
                codebooks[level, dead] = residual[pick]


@ActionTokenizerConfig.register_subclass("vq")
@dataclass
class VQTokenizerConfig(ActionTokenizerConfig):
    window: int = 5  # W: action steps per window (VQ-VLA: 5); the chunk length must be a multiple of it
    levels: int = 4  # L: residual quantizers, each adding one token per window
    codes: int = 256  # K: codes per level; the vocabulary is L * K ids
    latent_dim: int = 32  # width of the quantized latent
    hidden: int = 128  # width of the encoder's and decoder's two hidden layers
    fit_steps: int = 3000  # Adam steps of `fit`; the first fifth trains the autoencoder without quantization
    batch_size: int = 512  # windows per fitting step
    lr: float = 1e-3
    commitment: float = 0.25  # weight of the encoder's pull towards its codes (the codebook term has weight 1)
    seed: int = 0  # fitting is deterministic per seed

    def __post_init__(self):
        for name in ("window", "levels", "codes", "latent_dim", "hidden", "fit_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"vq tokenizer: {name} must be >= 1, got {getattr(self, name)}")

    tokenizer_class = VQTokenizer

    def build(self) -> VQTokenizer:
        return VQTokenizer(self)
