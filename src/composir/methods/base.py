"""What every method provides: a composed query embedding, a target embedding, its losses."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from composir.encoders.base import Encoder
from composir.errors import ConfigError
from composir.methods.batch import TripletCollator
from composir.methods.losses import covr_hn_nce, hn_nce, info_nce
from composir.methods.scoring import similarity
from composir.utils.typed import bounded

LOSSES = ("infonce", "hnnce", "hnnce_covr")  # hnnce_covr: CoVR's own form (both directions, summed)


@dataclass
class MethodConfig:
    temperature: float = bounded(0.07, 0, 100, low_open=True)
    learn_temperature: bool = True
    # "infonce", "hnnce" (hard-negative NCE; alpha=1, beta=0 equals InfoNCE) or "hnnce_covr" (CoVR's
    # own computation of it: both directions summed, weights in the graph; methods/losses.py)
    loss: str = "infonce"
    hn_alpha: float = bounded(1.0, 0)
    hn_beta: float = bounded(0.0, 0)
    symmetric: bool = False  # add the target -> query direction
    # Weight of each loss term by its name (``losses``' keys); a term not named weighs 1.
    loss_weights: dict[str, float] = field(default_factory=dict)
    # Under DDP, every rank's targets (and queries, for the symmetric term) are negatives, gathered
    # with their gradients (open_clip's gather_with_grad): the loss equals one process's on the
    # global batch. Off: each rank contrasts within its own slice.
    gather_negatives: bool = False

    def __post_init__(self) -> None:
        # Every method's own ``validate`` adds its rules; these hold for all of them.
        if self.loss not in LOSSES:
            raise ConfigError(f"method.config.loss must be one of {list(LOSSES)}, got {self.loss!r}")

    def training_settings(self) -> dict[str, Any]:
        """The settings that change what training does. Two configs equal here train the same model
        and differ only at inference (benchmarks/compare.py then trains it once and scores both)."""
        return asdict(self)


class RetrievalMethod(nn.Module):
    """Base class: (reference frames, text) -> query; target frames -> target; in-batch InfoNCE."""

    name = "method"
    config_class: type[MethodConfig] = MethodConfig
    # Frozen parameters under these prefixes are rebuilt from the config (``pretrained``) when a
    # run is loaded, so checkpoints leave them out (``train.save_frozen`` keeps them).
    rebuilt_prefixes: tuple[str, ...] = ("encoder.", "target_encoder.")
    # Whether ``encode_target`` reads the item's caption (``GalleryItem.caption``) besides its
    # frames: evaluation, indexing and search then tokenize captions for it.
    target_text = False
    # The encoder capability the method needs (a runtime-checkable protocol from encoders.base), and
    # how ``composir methods`` names it; None: any Encoder.
    backbone: Any = None
    backbone_text = "any encoder"
    # A method whose every weight is the encoder's: usable zero-shot with pretrained weights.
    training_free = False
    # How its embeddings score at inference (``methods.scoring``); ``use_scoring`` picks it per benchmark.
    active_scoring = "vector"
    # Whether ``encode_target`` weighs a video's frames by per-frame scores (``frame_scores=``, a
    # (B, T) tensor from the item's ``extra["frame_scores"]``: WebVid-CoVR's ``scores`` column).
    target_frame_scores = False

    def probe_features(self, frames: torch.Tensor, tokens) -> dict[str, torch.Tensor]:
        """Named (B, D) features of a mechanism, for the claims' decoding preconditions
        (``methods.claims.Decodes``): what the mechanism computes for these queries. None by default."""
        return {}

    @property
    def reference_sampling(self) -> str:
        """Which frames of a reference video the query reads (``data.media.frame_indices``):
        ``segments``, the same as a target's, unless a method reads one middle frame."""
        return "segments"

    def __init__(self, encoder: Encoder, config: MethodConfig | None = None):
        super().__init__()
        self.encoder = encoder
        self.config = config or self.config_class()
        # The common preamble, once: the config's own rules, then the backbone capability.
        if hasattr(self.config, "validate"):
            self.config.validate()
        if self.backbone is not None and not isinstance(encoder, self.backbone):
            raise ConfigError(f"{self.name} needs {self.backbone_text}; {encoder.name!r} has none")
        scale = torch.tensor(math.log(1.0 / self.config.temperature))
        self.logit_scale = nn.Parameter(scale, requires_grad=self.config.learn_temperature)

    def scoring_for(self, benchmark: str | None) -> str:
        """The scoring this method ranks ``benchmark`` with (None: a user's own gallery)."""
        return "vector"

    def use_scoring(self, benchmark: str | None) -> str:
        """Embed for ``benchmark``'s scoring from now on (evaluation and indexing call this first)."""
        self.active_scoring = self.scoring_for(benchmark)
        return self.active_scoring

    def collator(self) -> TripletCollator:
        """What turns training items into this method's batches (see ``methods.batch``)."""
        return TripletCollator(self.encoder.tokenize, frame_scores=self.target_frame_scores)

    def encode_query(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_queries(self, frames: torch.Tensor, tokens: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
        """Queries over distinct references: query i fuses ``frames[reference_index[i]]`` with ``tokens[i]``.

        Benchmarks reuse references (CIRR: 4,181 val queries over 2,165 references), so evaluation
        decodes each reference once and calls this. Methods whose reference encoding does not
        depend on the text override it to run the vision tower once per reference as well.
        """
        return self.encode_query(frames[reference_index], tokens)

    def encode_target(self, frames: torch.Tensor, tokens: Any = None) -> torch.Tensor:
        """Target embeddings of ``frames``; ``tokens``: their captions, given when ``target_text``."""
        return F.normalize(self.encoder.encode_image(frames), dim=-1)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        query = self.encode_query(batch["reference"], batch["tokens"])
        target = self.encode_target(batch["target"])
        return {"contrastive": self.contrastive(query, target)}

    def contrastive(
        self,
        query: torch.Tensor,
        target: torch.Tensor,
        extra_negatives: torch.Tensor | None = None,
        extra_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The configured batch contrastive loss between normalised query and target features.
        ``extra_negatives`` (N, D): more negative columns for the query -> target direction (a
        memory bank, the same on every rank); ``extra_mask`` (B, N) True where one is the query's
        own positive, which is then left out."""
        scale = self.logit_scale.exp().clamp(max=100.0)
        all_query, all_target, offset = query, target, 0
        if self.config.gather_negatives and dist.is_available() and dist.is_initialized():
            all_query, all_target = gather_with_grad(query), gather_with_grad(target)
            offset = dist.get_rank() * len(query)
        if self.config.loss == "hnnce_covr":  # CoVR's form: the (gathered) square batch, both directions
            if extra_negatives is not None and len(extra_negatives):
                raise ConfigError("loss hnnce_covr is CoVR's in-batch loss; it takes no memory bank")
            return covr_hn_nce(similarity(all_query, all_target), scale, self.config.hn_alpha, self.config.hn_beta)
        labels = torch.arange(len(query), device=query.device) + offset
        sim = similarity(query, all_target)
        exclude = None
        if extra_negatives is not None and len(extra_negatives):
            bank = similarity(query, extra_negatives.to(query))
            if extra_mask is not None:  # left out on the logits (losses.py), never as -inf here
                exclude = torch.cat([torch.zeros_like(sim, dtype=torch.bool), extra_mask.to(sim.device)], dim=1)
            sim = torch.cat([sim, bank], dim=1)
        loss = self._contrast(sim, scale, labels, exclude)
        if self.config.symmetric:
            loss = (loss + self._contrast(similarity(target, all_query), scale, labels)) / 2
        return loss

    def _contrast(
        self, sim: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        c = self.config
        if c.loss == "infonce":
            return info_nce(sim, scale, labels, exclude)
        if c.loss == "hnnce":
            return hn_nce(sim, scale, c.hn_alpha, c.hn_beta, labels, exclude)
        if c.loss == "hnnce_covr":  # the caption term and other pairs: the square in-batch matrix
            return covr_hn_nce(sim, scale, c.hn_alpha, c.hn_beta)
        raise ValueError(f"unknown loss {c.loss!r}; expected one of {list(LOSSES)}")

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # DDP hooks gradient sync onto forward(), so training calls the losses through it.
        return self.weighted(self.losses(batch))

    def weighted(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``losses`` with ``config.loss_weights`` applied; naming a term the method has not is an error."""
        weights = self.config.loss_weights
        unknown = sorted(set(weights) - set(losses))
        if unknown:
            raise ConfigError(
                f"method.config.loss_weights: {self.name} has no loss term(s) {unknown} with this config; "
                f"its terms: {sorted(losses)}"
            )
        return {k: v * weights[k] if k in weights else v for k, v in losses.items()}

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW must not decay: biases and norms (fewer than 2 dimensions), the
        temperature, and what the encoder names (embeddings, query tokens)."""
        own = {n for n, p in self.named_parameters() if p.ndim < 2 or "logit_scale" in n or "embedding" in n}
        return own | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def after_epoch(self, epoch: int) -> None:
        """Called on every rank when a training epoch (a full pass of the sampler) ends."""

    def after_step(self, step: int) -> None:
        """Called on every rank after each optimizer step (memory banks, prototype updates): state
        the method changes outside the gradient step belongs here, not in ``losses``."""

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """True when some trainable parameter gets no gradient in a training step (DDP must then
        search for them, which costs time). Methods freeze what their config does not use instead."""
        return False

    def weights_loaded(self, names: set[str]) -> None:
        """Called after weights named ``names`` were copied in from another run (``train.init_from``)."""

    def diagnostics(self, frames: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
        """Numbers about the method's own mechanism on these queries (the claims board shows them
        beside the method's rows); empty where a method has none."""
        return {}

    def validation_metrics(self, bench: Any, num_frames: int) -> dict[str, float]:
        """Numbers about a sub-task the method relies on, measured on a validation split and logged
        beside its retrieval metrics (metrics.csv); empty where a method has none."""
        return {}

    def explain(self, frames: torch.Tensor, tokens: torch.Tensor) -> list[dict[str, Any]] | None:
        """Per-query explanation for people (reasoning, prototypes); None where the method has none."""
        return self.encode_query_explained(frames, tokens)[1]

    def encode_query_explained(
        self, frames: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, list[dict[str, Any]] | None]:
        """The query embedding and its explanation from one forward pass (a server answers both
        per request); methods with an explanation override this."""
        return self.encode_query(frames, tokens), None


def media_frames(method: RetrievalMethod, paths: list, num_frames: int) -> torch.Tensor:
    """The preprocessed frames (B, T, 3, H, W) of these media files, on the method's device (for a
    method's own measurements on a benchmark split)."""
    from composir.data.media import load_media

    enc = method.encoder
    device = next(method.parameters()).device
    return torch.stack([torch.stack([enc.preprocess(f) for f in load_media(p, num_frames)]) for p in paths]).to(device)


def all_gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated in rank order, without gradients (state updates: libraries, banks)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated in rank order; gradients flow back to the rank that owns each row."""
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(x.contiguous()), dim=0)


class LateFusion(RetrievalMethod):
    """A query combined from the pooled reference feature and the text feature (``combine``)."""

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_query(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.combine(self.encoder.encode_image(frames), self.encoder.encode_text(tokens))

    def encode_queries(self, frames: torch.Tensor, tokens: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
        return self.combine(self.encoder.encode_image(frames)[reference_index], self.encoder.encode_text(tokens))
