"""Residual quantizers behind semantic IDs: RQ-KMeans and RQ-VAE.

A quantizer maps a vector to ``levels`` codes in ``[0, codebook_size)``: level 1 quantizes the
vector, each later level what the earlier ones left (the residual). It is trained once
(``fit``) and then frozen: ``encode`` of new vectors uses the stored codebooks and never
trains, which is what keeps the IDs of a refreshed store stable.

- **RQ-KMeans** (TIGER's simple variant, used by GRID and OneRec): per level, k-means on the
  residual, with faiss. Options: L2-normalize the residual before each level (GRID), and a
  balanced assignment in which every code gets at most ``ceil(N / K)`` items (OneRec).
- **RQ-VAE** (TIGER): an MLP encoder to a small latent, residual codebooks on the latent
  (initialized by RQ-KMeans on the untrained encoder's latents), an MLP decoder; loss =
  reconstruction + per-level codebook and commitment terms; codes unused in an epoch are
  restarted on residuals of the last batch; gradients pass the quantizer straight through or
  by the rotation trick (Fifty et al., 2024).

Everything here imports numpy only at module level; faiss and torch when a quantizer is built.
Weights are saved with safetensors (no pickle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from itemlens.errors import ConfigError

#: how many times a quantizer was trained in this process (tests check that refreshes train none)
TRAININGS = {"count": 0}


# -- k-means ---------------------------------------------------------------------------------

def kmeans(x: np.ndarray, k: int, *, niter: int, seed: int) -> np.ndarray:
    """Centroids [k, d] of ``x`` by faiss' k-means (deterministic for a seed)."""
    import faiss

    n, d = x.shape
    if n < k:
        raise ConfigError(f"k-means with {k} codes needs at least {k} vectors; got {n} (lower codebook_size)")
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, verbose=False, max_points_per_centroid=256)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.copy()


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each row (exact, faiss' flat L2 search)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, codes = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return codes[:, 0].astype(np.int64)


def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[n, k] squared L2 distances."""
    x = x.astype(np.float32, copy=False)
    return np.maximum(
        (x * x).sum(1, keepdims=True) - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None, :], 0.0)


def balanced_assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row to a centroid, no centroid taking more than ``ceil(n / k)`` rows.

    Rounds of proposals: every unassigned row proposes to its nearest centroid that has not
    refused it yet; a centroid keeps its nearest proposers up to its remaining capacity. Ends
    because total capacity >= n; deterministic (ties broken by row number).
    """
    n, k = x.shape[0], centroids.shape[0]
    capacity = math.ceil(n / k)
    dist = squared_distances(x, centroids)
    preference = np.argsort(dist, axis=1, kind="stable")
    codes = np.full(n, -1, np.int64)
    load = np.zeros(k, np.int64)
    tried = np.zeros(n, np.int64)
    pending = np.arange(n)
    while pending.size:
        choice = preference[pending, tried[pending]]
        order = np.lexsort((pending, dist[pending, choice], choice))      # by centroid, then distance
        pending, choice = pending[order], choice[order]
        starts = np.r_[0, np.flatnonzero(np.diff(choice)) + 1]
        rank = np.arange(choice.size) - np.repeat(starts, np.diff(np.r_[starts, choice.size]))
        accepted = rank < (capacity - load[choice])
        codes[pending[accepted]] = choice[accepted]
        load += np.bincount(choice[accepted], minlength=k)
        tried[pending[~accepted]] += 1
        pending = np.sort(pending[~accepted])
    return codes


def balanced_kmeans(x: np.ndarray, k: int, *, niter: int, seed: int, rounds: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """k-means whose assignment step is :func:`balanced_assign` (started from faiss' centroids)."""
    centroids = kmeans(x, k, niter=niter, seed=seed)
    codes = balanced_assign(x, centroids)
    for _ in range(rounds):
        sums = np.zeros_like(centroids)
        np.add.at(sums, codes, x)
        counts = np.bincount(codes, minlength=k)[:, None]
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids).astype(np.float32)
        new = balanced_assign(x, centroids)
        if np.array_equal(new, codes):
            break
        codes = new
    return centroids, codes


# -- quantizers ------------------------------------------------------------------------------

@dataclass
class Encoded:
    codes: np.ndarray                   # [n, levels] int64
    last_distances: np.ndarray | None   # [n, K] squared distances of the last residual to each
                                        # last-level code (asked for by nearest-free uniqueness)


class RQKMeans:
    method = "rq-kmeans"

    def __init__(self, levels: int, codebook_size: int, *, normalize_residual: bool = False,
                 balanced: bool = False, niter: int = 20, seed: int = 0):
        self.levels, self.k = levels, codebook_size
        self.normalize_residual, self.balanced = normalize_residual, balanced
        self.niter, self.seed = niter, seed
        self.codebooks: np.ndarray | None = None    # [levels, K, d]
        self.scales: np.ndarray | None = None       # [levels] mean residual norm (normalized mode)

    def _unit(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        norms = np.linalg.norm(r, axis=1)
        if not self.normalize_residual:
            return r, np.ones_like(norms)
        return r / np.maximum(norms, 1e-12)[:, None], norms

    def fit(self, x: np.ndarray) -> RQKMeans:
        self.fit_encode(x)
        return self

    def fit_encode(self, x: np.ndarray, distances: bool = False) -> Encoded:
        """Train, and return the training vectors' codes (balanced: as assigned in training)."""
        TRAININGS["count"] += 1
        r = np.array(x, dtype=np.float32)
        codebooks, scales, all_codes = [], [], []
        for level in range(self.levels):
            u, norms = self._unit(r)
            if self.balanced:
                centroids, codes = balanced_kmeans(u, self.k, niter=self.niter, seed=self.seed + level)
            else:
                centroids = kmeans(u, self.k, niter=self.niter, seed=self.seed + level)
                codes = nearest(u, centroids)
            if level == self.levels - 1:
                last = squared_distances(u, centroids) if distances else None
            codebooks.append(centroids)
            all_codes.append(codes)
            scales.append(float(norms.mean()))
            r = r - norms[:, None] * centroids[codes]     # the residual stays in the input's scale
        self.codebooks, self.scales = np.stack(codebooks), np.array(scales, np.float32)
        return Encoded(np.stack(all_codes, 1).astype(np.int64), last)

    def encode(self, x: np.ndarray, distances: bool = False) -> Encoded:
        """Codes of new vectors with the frozen codebooks (nearest code; a balanced quantizer's
        capacities apply to its training set only)."""
        r = np.array(x, dtype=np.float32)
        codes = np.zeros((len(r), self.levels), np.int64)
        for level in range(self.levels):
            u, norms = self._unit(r)
            if level == self.levels - 1:
                last = squared_distances(u, self.codebooks[level]) if distances else None
            codes[:, level] = nearest(u, self.codebooks[level])
            r = r - norms[:, None] * self.codebooks[level][codes[:, level]]
        return Encoded(codes, last)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The vector the codes stand for (normalized mode: each level at its mean norm)."""
        scale = self.scales if self.normalize_residual else np.ones(self.levels, np.float32)
        return sum(scale[i] * self.codebooks[i][codes[:, i]] for i in range(self.levels))

    def state(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks, "scales": self.scales}

    def load_state(self, tensors: dict[str, np.ndarray]) -> RQKMeans:
        self.codebooks, self.scales = tensors["codebooks"], tensors["scales"]
        return self


class RQVAE:
    method = "rq-vae"

    def __init__(self, levels: int, codebook_size: int, *, input_dim: int, latent_dim: int = 32,
                 hidden: tuple[int, ...] = (512, 256), epochs: int = 50, batch_size: int = 1024, lr: float = 1e-3,
                 beta: float = 0.25, gradient: str = "ste", restart_dead_codes: bool = True, seed: int = 0,
                 device: str = "cpu"):
        import torch

        self.levels, self.k, self.input_dim, self.latent_dim = levels, codebook_size, input_dim, latent_dim
        self.hidden, self.epochs, self.batch_size, self.lr, self.beta = tuple(hidden), epochs, batch_size, lr, beta
        self.gradient, self.restart_dead_codes, self.seed, self.device = gradient, restart_dead_codes, seed, device
        torch.manual_seed(seed)
        self.encoder = _mlp([input_dim, *self.hidden, latent_dim]).to(device)
        self.decoder = _mlp([latent_dim, *reversed(self.hidden), input_dim]).to(device)
        self.codebooks = torch.nn.Parameter(torch.zeros(levels, codebook_size, latent_dim, device=device))
        self.history: list[dict[str, float]] = []

    def _quantize(self, z):
        """Codes, the quantized latent, and the codebook + commitment loss."""
        import torch

        r, zq = z, torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        for level in range(self.levels):
            book = self.codebooks[level]
            c = torch.cdist(r.detach(), book.detach()).argmin(1)
            e = book[c]
            loss = loss + ((e - r.detach()) ** 2).sum(-1).mean() + self.beta * ((r - e.detach()) ** 2).sum(-1).mean()
            codes.append(c)
            zq = zq + e.detach()
            r = r - e.detach()
        return torch.stack(codes, 1), zq, loss

    def _through(self, z, zq):
        """The quantized latent as the decoder's input, with gradients to the encoder."""
        if self.gradient == "ste":
            return z + (zq - z).detach()
        # rotation trick: zq = s R z with R rotating z onto zq and s = |zq| / |z|, both constants
        eps = 1e-8
        zn = z.norm(dim=-1, keepdim=True)
        qn = zq.norm(dim=-1, keepdim=True)
        e, q = (z / (zn + eps)).detach(), (zq / (qn + eps)).detach()
        r = e + q
        r = r / (r.norm(dim=-1, keepdim=True) + eps)
        rotated = z - 2 * r * (r * z).sum(-1, keepdim=True) + 2 * q * (e * z).sum(-1, keepdim=True)
        return (qn / (zn + eps)).detach() * rotated

    def fit(self, x: np.ndarray) -> RQVAE:
        import torch

        # Same seed, same IDs: torch's default CPU kernels for some backward passes (scatter-adds
        # of the codebook gradients) are not run-to-run deterministic; the deterministic ones are.
        previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._fit(x)
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])

    def _fit(self, x: np.ndarray) -> RQVAE:
        import torch

        TRAININGS["count"] += 1
        generator = torch.Generator().manual_seed(self.seed)
        data = torch.as_tensor(np.asarray(x, np.float32)).to(self.device)
        with torch.no_grad():       # codebooks start as residual k-means of the initial latents
            latent = self.encoder(data).cpu().numpy()
            init = RQKMeans(self.levels, self.k, niter=10, seed=self.seed).fit(latent)
            self.codebooks.copy_(torch.as_tensor(init.codebooks))
        params = [*self.encoder.parameters(), *self.decoder.parameters(), self.codebooks]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        n = len(data)
        for epoch in range(self.epochs):
            used = torch.zeros(self.levels, self.k, dtype=torch.long, device=self.device)
            totals = {"reconstruction": 0.0, "quantization": 0.0}
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n, self.batch_size):
                batch = data[order[start:start + self.batch_size]]
                z = self.encoder(batch)
                codes, zq, q_loss = self._quantize(z)
                recon = self.decoder(self._through(z, zq))
                r_loss = ((recon - batch) ** 2).sum(-1).mean()
                optimizer.zero_grad()
                (r_loss + q_loss).backward()
                optimizer.step()
                used += torch.nn.functional.one_hot(codes, self.k).sum(0)
                totals["reconstruction"] += float(r_loss.detach()) * len(batch) / n
                totals["quantization"] += float(q_loss.detach()) * len(batch) / n
            dead = int((used == 0).sum())
            if dead and self.restart_dead_codes and epoch < self.epochs - 1:
                self._restart(data, used, generator)
            self.history.append({**totals, "dead_codes": dead})
        return self

    def _restart(self, data, used, generator) -> None:
        """Move codes no item used this epoch onto residuals of random items at that level."""
        import torch

        with torch.no_grad():
            sample = data[torch.randperm(len(data), generator=generator)[: min(len(data), 4 * self.k)].to(self.device)]
            r = self.encoder(sample)
            for level in range(self.levels):
                dead = torch.nonzero(used[level] == 0).flatten()
                if len(dead):
                    pick = torch.randperm(len(r), generator=generator)[: len(dead)].to(self.device)
                    self.codebooks[level, dead[: len(pick)]] = r[pick]
                book = self.codebooks[level]
                r = r - book[torch.cdist(r, book).argmin(1)]

    def fit_encode(self, x: np.ndarray, distances: bool = False) -> Encoded:
        return self.fit(x).encode(x, distances)

    def encode(self, x: np.ndarray, distances: bool = False) -> Encoded:
        import torch

        codes, last = [], []
        with torch.no_grad():
            for start in range(0, len(x), 8192):
                z = self.encoder(torch.as_tensor(np.asarray(x[start:start + 8192], np.float32)).to(self.device))
                c, _, _ = self._quantize(z)
                if distances:
                    r = z - sum(self.codebooks[i][c[:, i]] for i in range(self.levels - 1)) if self.levels > 1 else z
                    last.append((torch.cdist(r, self.codebooks[-1]) ** 2).cpu().numpy())
                codes.append(c.cpu().numpy())
        if not codes:
            return Encoded(np.zeros((0, self.levels), np.int64), np.zeros((0, self.k), np.float32) if distances else None)
        return Encoded(np.concatenate(codes).astype(np.int64), np.concatenate(last) if distances else None)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            c = torch.as_tensor(codes, device=self.device)
            zq = sum(self.codebooks[i][c[:, i]] for i in range(self.levels))
            return self.decoder(zq).cpu().numpy()

    def state(self) -> dict[str, np.ndarray]:
        tensors = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        tensors.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        tensors["codebooks"] = self.codebooks.detach()
        return {k: v.cpu().numpy() for k, v in tensors.items()}

    def load_state(self, tensors: dict[str, np.ndarray]) -> RQVAE:
        import torch

        self.encoder.load_state_dict({k[8:]: torch.as_tensor(v) for k, v in tensors.items() if k.startswith("encoder.")})
        self.decoder.load_state_dict({k[8:]: torch.as_tensor(v) for k, v in tensors.items() if k.startswith("decoder.")})
        with torch.no_grad():
            self.codebooks.copy_(torch.as_tensor(tensors["codebooks"]))
        return self


def _mlp(sizes: list[int]):
    import torch

    layers: list[Any] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


# -- building and saving -----------------------------------------------------------------------

def build(method: str, params: dict[str, Any], input_dim: int):
    """A quantizer from a semantic-ID spec's method and parameters."""
    common = {"levels": params["levels"], "codebook_size": params["codebook_size"], "seed": params["seed"]}
    if method == "rq-kmeans":
        return RQKMeans(**common, normalize_residual=params["normalize_residual"], balanced=params["balanced"],
                        niter=params["kmeans_iterations"])
    if method == "rq-vae":
        vae = params["vae"]
        return RQVAE(**common, input_dim=input_dim, latent_dim=vae["latent_dim"], hidden=tuple(vae["hidden"]),
                     epochs=vae["epochs"], batch_size=vae["batch_size"], lr=vae["lr"], beta=vae["beta"],
                     gradient=vae["gradient"], restart_dead_codes=vae["restart_dead_codes"],
                     device=params.get("device", "cpu"))
    raise ConfigError(f"unknown semantic-ID method {method!r}; methods: rq-kmeans, rq-vae")


def save(quantizer) -> bytes:
    from safetensors.numpy import save as save_tensors

    return save_tensors({k: np.ascontiguousarray(v) for k, v in quantizer.state().items()},
                        metadata={"method": quantizer.method})


def load(method: str, params: dict[str, Any], input_dim: int, blob: bytes):
    from safetensors.numpy import load as load_tensors

    return build(method, {**params, "device": "cpu"}, input_dim).load_state(load_tensors(blob))


# -- metrics ---------------------------------------------------------------------------------

def code_metrics(codes: np.ndarray, codebook_size: int, x: np.ndarray | None = None,
                 decoded: np.ndarray | None = None) -> dict[str, Any]:
    """Collision rate ((N - unique tuples) / N), largest group of one tuple, per-level
    utilization (share of codes used) and perplexity (exp of the code distribution's entropy),
    and the relative reconstruction error sum |x - x^|^2 / sum |x|^2."""
    n = len(codes)
    out: dict[str, Any] = {"items": n}
    if n == 0:
        return out
    _, counts = np.unique(codes, axis=0, return_counts=True)
    out["collision_rate"] = round(float((n - len(counts)) / n), 6)
    out["largest_group"] = int(counts.max())
    usage = [np.bincount(codes[:, level], minlength=codebook_size) for level in range(codes.shape[1])]
    out["utilization"] = [round(float((u > 0).mean()), 4) for u in usage]
    out["perplexity"] = [round(float(np.exp(-sum(p * math.log(p) for p in u[u > 0] / n))), 2) for u in usage]
    if x is not None and decoded is not None:
        out["reconstruction_error"] = round(float(((x - decoded) ** 2).sum() / max(float((x ** 2).sum()), 1e-30)), 6)
    out["usage"] = [u.tolist() for u in usage]
    return out


def usage_plot(metrics: dict[str, Any], title: str) -> bytes:
    """A PNG: items per code, one panel per level, codes sorted by use."""
    from itemlens.store.plots import bar_panels

    return bar_panels([(f"level {level + 1}: {metrics['utilization'][level]:.0%} used, "
                        f"perplexity {metrics['perplexity'][level]:.0f}", sorted(counts, reverse=True),
                        "code (sorted by use)") for level, counts in enumerate(metrics.get("usage") or [])], title)
