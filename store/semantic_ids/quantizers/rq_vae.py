"""RQ-VAE (TIGER): an MLP encoder to a small latent, residual codebooks on the latent
(initialized by RQ-KMeans on the untrained encoder's latents), an MLP decoder; loss =
reconstruction + per-level codebook and commitment terms; codes unused in an epoch are
restarted on residuals of the last batch; gradients pass the quantizer straight through or by
the rotation trick (Fifty et al., 2024)."""

from __future__ import annotations

from typing import Any

import numpy as np

from itemlens.store.semantic_ids.quantizers.base import TRAININGS, Encoded
from itemlens.store.semantic_ids.quantizers.rq_kmeans import RQKMeans


class RQVAE:
    method = "rq-vae"

    @classmethod
    def from_params(cls, params: dict[str, Any], input_dim: int) -> RQVAE:
        """From a semantic-ID definition's fields (``SemanticIdSpec.model_dump()``)."""
        vae = params["vae"]
        return cls(
            params["levels"],
            params["codebook_size"],
            seed=params["seed"],
            input_dim=input_dim,
            latent_dim=vae["latent_dim"],
            hidden=tuple(vae["hidden"]),
            epochs=vae["epochs"],
            batch_size=vae["batch_size"],
            lr=vae["lr"],
            beta=vae["beta"],
            gradient=vae["gradient"],
            restart_dead_codes=vae["restart_dead_codes"],
            device=params.get("device", "cpu"),
        )

    def __init__(
        self,
        levels: int,
        codebook_size: int,
        *,
        input_dim: int,
        latent_dim: int = 32,
        hidden: tuple[int, ...] = (512, 256),
        epochs: int = 50,
        batch_size: int = 1024,
        lr: float = 1e-3,
        beta: float = 0.25,
        gradient: str = "ste",
        restart_dead_codes: bool = True,
        seed: int = 0,
        device: str = "cpu",
    ):
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
        with torch.no_grad():  # codebooks start as residual k-means of the initial latents
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
                batch = data[order[start : start + self.batch_size]]
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
                z = self.encoder(torch.as_tensor(np.asarray(x[start : start + 8192], np.float32)).to(self.device))
                c, _, _ = self._quantize(z)
                if distances:
                    r = z - sum(self.codebooks[i][c[:, i]] for i in range(self.levels - 1)) if self.levels > 1 else z
                    last.append((torch.cdist(r, self.codebooks[-1]) ** 2).cpu().numpy())
                codes.append(c.cpu().numpy())
        if not codes:
            return Encoded(
                np.zeros((0, self.levels), np.int64), np.zeros((0, self.k), np.float32) if distances else None
            )
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

        self.encoder.load_state_dict(
            {k[8:]: torch.as_tensor(v) for k, v in tensors.items() if k.startswith("encoder.")}
        )
        self.decoder.load_state_dict(
            {k[8:]: torch.as_tensor(v) for k, v in tensors.items() if k.startswith("decoder.")}
        )
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
