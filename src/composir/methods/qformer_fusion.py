"""The BLIP-2 multimodal fusion baseline (CoVR-2 / SPRC style).

The composed query is the Q-Former's joint encoding of the text and the query tokens while they
cross-attend to the reference's vision tokens (``QFormerBackbone.fusion_hidden``); the target is
the Q-Former image feature. Needs an encoder with a Q-Former (``blip2`` or ``tiny``).

Defaults are composir's first baseline (the projected query-token mean, targets through the
trained model, a learned temperature, InfoNCE). The switches below make it CoVR-2 as its code
does it (``configs/covr2-webvid-covr.yaml`` sets them all):

- ``token_norm``: each projected query token normalised before the mean (query and target);
  ``renormalize_mean: false`` leaves that mean unnormalised, as CoVR-2's code scores it;
- ``frozen_targets``: targets embedded by a frozen copy of the encoder as it was built (the
  pretrained model), as CoVR-2 embeds them once before training; it is not saved in checkpoints
  (rebuilt from ``pretrained``) unless the run started from another run's weights;
- ``caption_weight``: an extra contrastive term between the query and the target's caption
  (``extra["target_caption"]``), embedded by the same (frozen, if so) model's text path;
- ``reference_frames: middle``: the reference video's exact middle frame (frame ``N // 2``, decoded
  alone; from a feature cache, the middle of the cached frames);
- ``target_pooling: embedding``: target frames embedded one by one, and each query token averaged
  over the frames (and made unit again), instead of averaging vision tokens before the Q-Former;
  ``frame_weighting: scores`` weighs the frames by softmax(scores / 0.1) of the annotation's
  per-frame scores (WebVid-CoVR's ``scores`` column; equal weights where an item has none);
- the loss itself is MethodConfig's: ``loss: hnnce_covr, hn_beta: 0.5, temperature: 0.07,
  learn_temperature: false, gather_negatives: true``;
- ``scoring`` / ``scoring_per_benchmark`` (``methods.scoring``): CoVR-2 ranks CIRR by the best
  pair of unit query and target tokens (``max_token_pairs``), the other benchmarks by the means.

SPRC (Xu et al., 2024) as its code computes it: ``query_pool: sprc`` -- a second, image-free
Q-Former pass over [the first pass's query outputs; the text] in which every position goes through
the text feed-forward, and the token at the text's first position, projected, is the query -- with
``scoring: max_target_tokens`` (the best of the target's unit query tokens).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from composir.encoders.base import QFormerBackbone
from composir.errors import ConfigError
from composir.methods.base import MethodConfig, RetrievalMethod
from composir.methods.batch import CaptionedCollator, TripletCollator
from composir.methods.registry import register_method
from composir.methods.scoring import check_scoring
from composir.utils.typed import bounded

QUERY_POOLS = ("encoder", "sprc", "text_cls")


@dataclass
class QFormerFusionConfig(MethodConfig):
    token_norm: bool = False
    # With token_norm: the mean of the unit tokens normalised again (true), or left as it is (false),
    # as CoVR-2's code scores it -- a mean's length then weighs in the inner product, and rankings differ.
    renormalize_mean: bool = True
    frozen_targets: bool = False
    # With frozen_targets: the pretrained model the targets come from, when it is not the one the
    # query side starts from (CoVR-2: Salesforce/blip2-itm-vit-g-coco); the run factory builds it.
    target_pretrained: str | None = None
    caption_weight: float = bounded(0.0, 0)
    # late: the target is unit(unit image target + unit text feature of its caption), the caption
    # read where the item has one (evaluation and indexing hand it over, as to CSMCIR): a captioned
    # target used the asymmetric way, beside CSMCIR's one symmetric pass. none: pixels only.
    target_caption: str = "none"
    reference_frames: str = "all"  # all | middle
    target_pooling: str = "tokens"  # tokens (vision tokens averaged over frames) | embedding
    # With target_pooling embedding: frames weighted equally (uniform) or by softmax(scores / T)
    # of their per-frame scores (scores; CoVR's emb_pool "query", T = 0.1)
    frame_weighting: str = "uniform"
    frame_score_temperature: float = bounded(0.1, 0, low_open=True)
    # encoder: the encoder's ``pool_fusion`` (or the token_norm mean); sprc: SPRC's second pass;
    # text_cls: the fused pass's first text token, projected (BLIP-2's ITC text feature)
    query_pool: str = "encoder"
    scoring: str = "vector"  # methods.scoring; training and any benchmark not named below
    scoring_per_benchmark: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.target_pretrained and not self.frozen_targets:
            raise ConfigError(
                "qformer_fusion.target_pretrained names the frozen target model: set frozen_targets: true"
            )
        if self.query_pool not in QUERY_POOLS:
            raise ConfigError(f"qformer_fusion.query_pool must be one of {list(QUERY_POOLS)}, got {self.query_pool!r}")
        check_scoring(self.scoring, "qformer_fusion.scoring")
        for bench, value in self.scoring_per_benchmark.items():
            check_scoring(value, f"qformer_fusion.scoring_per_benchmark.{bench}")
        if self.query_pool != "encoder" and self.scoring == "max_token_pairs":
            raise ConfigError(
                f"qformer_fusion: query_pool {self.query_pool} gives one query vector; "
                "max_token_pairs needs query tokens"
            )
        if self.reference_frames not in ("all", "middle"):
            raise ConfigError(f"qformer_fusion.reference_frames must be all or middle, got {self.reference_frames!r}")
        if self.target_pooling not in ("tokens", "embedding"):
            raise ConfigError(f"qformer_fusion.target_pooling must be tokens or embedding, got {self.target_pooling!r}")
        if self.frame_weighting not in ("uniform", "scores"):
            raise ConfigError(f"qformer_fusion.frame_weighting must be uniform or scores, got {self.frame_weighting!r}")
        if self.frame_weighting == "scores" and self.target_pooling != "embedding":
            raise ConfigError(
                "qformer_fusion.frame_weighting: scores weighs frame embeddings: set target_pooling: embedding"
            )
        if self.caption_weight < 0:
            raise ConfigError(f"qformer_fusion.caption_weight must not be negative, got {self.caption_weight}")
        if self.target_caption not in ("none", "late"):
            raise ConfigError(f"qformer_fusion.target_caption must be none or late, got {self.target_caption!r}")
        token_scorings = {self.scoring, *self.scoring_per_benchmark.values()} - {"vector"}
        if self.target_caption == "late" and token_scorings:
            raise ConfigError(
                f"qformer_fusion.target_caption: late adds one caption vector to one image vector; "
                f"scoring {sorted(token_scorings)[0]} scores tokens (use vector)"
            )


@register_method("qformer_fusion")
class QFormerFusion(RetrievalMethod):
    config_class = QFormerFusionConfig
    backbone = QFormerBackbone
    backbone_text = "an encoder with a Q-Former fusion"

    def __init__(self, encoder, config: QFormerFusionConfig | None = None):
        super().__init__(encoder, config)
        cfg: QFormerFusionConfig = self.config
        # A target model named by ``target_pretrained`` comes from the run factory (use_target_encoder).
        copied = cfg.frozen_targets and not cfg.target_pretrained
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False).eval() if copied else None

    def use_target_encoder(self, encoder) -> None:
        """The frozen target model, built by the run factory from ``target_pretrained``."""
        self.target_encoder = encoder.requires_grad_(False).eval()

    @property
    def ddp_find_unused_parameters(self) -> bool:
        # With frozen targets the live encoder's image projection serves no loss term.
        return self.target_encoder is not None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.target_encoder is not None:
            self.target_encoder.eval()  # the frozen target model never drops out
        return self

    def weights_loaded(self, names: set[str]) -> None:
        """After ``train.init_from``: the frozen target model is the loaded encoder, not the random one."""
        own_model = self.target_encoder is not None and not self.config.target_pretrained
        if own_model and not any(n.startswith("target_encoder.") for n in names):
            self.target_encoder.load_state_dict(self.encoder.state_dict())

    def scoring_for(self, benchmark: str | None) -> str:
        return self.config.scoring_per_benchmark.get(benchmark or "", self.config.scoring)

    @property
    def unit_queries(self) -> bool:
        """Whether the composed query is a unit vector (all but CoVR-2's unnormalised token mean)."""
        cfg = self.config
        return not (cfg.token_norm and not cfg.renormalize_mean and cfg.query_pool == "encoder")

    @property
    def reference_sampling(self) -> str:
        return "middle" if self.config.reference_frames == "middle" else "segments"

    @property
    def target_frame_scores(self) -> bool:
        return self.config.frame_weighting == "scores"

    @property
    def _scoring(self) -> str:
        """Training contrasts with the config's scoring; inference with the benchmark's."""
        return self.config.scoring if self.training else self.active_scoring

    @property
    def target_text(self) -> bool:  # evaluation and indexing hand captions to encode_target
        return self.config.target_caption == "late"

    def collator(self) -> TripletCollator:
        if self.config.caption_weight > 0 or self.target_text:
            return CaptionedCollator(self.encoder.tokenize, frame_scores=self.target_frame_scores)
        return super().collator()

    # ------------------------------------------------------------------------------ features
    def _reference(self, frames: torch.Tensor) -> torch.Tensor:
        if self.config.reference_frames == "middle" and frames.dim() == 5 and frames.shape[1] > 1:
            middle = frames.shape[1] // 2
            return frames[:, middle : middle + 1]
        return frames

    def _pool(self, projected: torch.Tensor, tokens_wanted: bool = False) -> torch.Tensor:
        """(B, Q, D) projected query tokens -> (B, D), normalised; or the unit tokens themselves
        (B, Q, D) when ``tokens_wanted`` (token scorings)."""
        if tokens_wanted:
            return F.normalize(projected, dim=-1)
        if self.config.token_norm:
            projected = F.normalize(projected, dim=-1)
            if not self.config.renormalize_mean:
                return projected.mean(1)
        return F.normalize(projected.mean(1), dim=-1)

    def _composed(self, hidden: torch.Tensor, tokens) -> torch.Tensor:
        q = self.encoder.num_query_tokens
        if self.config.query_pool == "text_cls":
            return F.normalize(self.encoder.project_text(hidden[:, q]), dim=-1)
        if self.config.query_pool == "sprc":
            second = self.encoder.refine_with_text(hidden[:, :q], tokens)
            return F.normalize(self.encoder.project_text(second[:, q]), dim=-1)
        if self._scoring == "max_token_pairs":
            return self._pool(self.encoder.project_text(hidden[:, :q]), tokens_wanted=True)
        if not self.config.token_norm:
            return F.normalize(self.encoder.pool_fusion(hidden), dim=-1)
        return self._pool(self.encoder.project_text(hidden[:, :q]))

    def encode_query(self, frames: torch.Tensor, tokens) -> torch.Tensor:
        return self._composed(self.encoder.fusion_hidden(self._reference(frames), tokens), tokens)

    def encode_queries(self, frames: torch.Tensor, tokens, reference_index: torch.Tensor) -> torch.Tensor:
        memory = self.encoder.vision_tokens(self._reference(frames))[reference_index]  # one ViT pass per reference
        return self._composed(self.encoder.fusion_hidden(None, tokens, memory), tokens)

    def encode_target(
        self, frames: torch.Tensor, tokens=None, frame_scores: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Target embeddings; ``tokens``: their captions (read with ``target_caption: late``);
        ``frame_scores`` (B, T): per-frame scores, read with ``frame_weighting: scores``."""
        target = self._target_features(frames, frame_scores)[0]
        return self._with_caption(target, tokens) if self.target_text else target

    def _with_caption(self, target: torch.Tensor, tokens) -> torch.Tensor:
        if tokens is None:  # an uncaptioned item: an empty caption, as CSMCIR fuses one
            tokens = self.encoder.tokenize([""] * len(target))
        return F.normalize(target + self.encode_caption(tokens), dim=-1)

    def _target_features(
        self, frames: torch.Tensor, frame_scores: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target embedding, and the mean of the trained encoder's query outputs for it when
        that pass made the embedding (a method that also reads the target's global feature then
        needs no second pass); None for frozen targets and frame-by-frame pooling."""
        encoder = self._target_model()
        tokens_wanted = self._scoring != "vector"
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.target_encoder is None):
            if self.config.target_pooling == "embedding" and frames.dim() == 5 and frames.shape[1] > 1:
                return self._frame_embedding_mean(encoder, frames, frame_scores, tokens_wanted), None
            hidden = encoder.image_query_outputs(frames)
            target = self._pool(encoder.project_image(hidden), tokens_wanted)
        return target, (hidden.mean(1) if encoder is self.encoder else None)

    def _frame_weights(self, frame_scores: torch.Tensor | None, b: int, t: int, like: torch.Tensor) -> torch.Tensor:
        if self.config.frame_weighting != "scores" or frame_scores is None:
            return like.new_full((b, t), 1.0 / t)
        return torch.softmax(frame_scores.to(like) / self.config.frame_score_temperature, dim=1)

    def _frame_embedding_mean(
        self, encoder, frames: torch.Tensor, frame_scores: torch.Tensor | None, tokens_wanted: bool
    ) -> torch.Tensor:
        """Every frame embedded as an image of its own, then averaged over frames with their weights.
        With token_norm (CoVR-2): the frames' unit tokens averaged per token and made unit again (its
        test re-normalises the stored frame mean), then pooled over tokens as ``_pool`` does."""
        b, t = frames.shape[:2]
        projected = encoder.project_image(encoder.image_query_outputs(frames.flatten(0, 1)[:, None]))
        weights = self._frame_weights(frame_scores, b, t, projected)
        if not self.config.token_norm:
            per_frame = self._pool(projected, tokens_wanted)
            return F.normalize(
                torch.einsum("bt,bt...->b...", weights, per_frame.view(b, t, *per_frame.shape[1:])), dim=-1
            )
        unit = F.normalize(projected, dim=-1).view(b, t, *projected.shape[1:])
        return self._pool(torch.einsum("bt,btqd->bqd", weights, unit), tokens_wanted)

    def _target_model(self):
        if self.target_encoder is None and self.config.target_pretrained:
            raise ConfigError(
                f"qformer_fusion: the frozen target model {self.config.target_pretrained!r} was never built "
                "(build the method through composir.runs.build_from_config)"
            )
        return self.target_encoder if self.target_encoder is not None else self.encoder

    def encode_caption(self, tokens) -> torch.Tensor:
        encoder = self._target_model()
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.target_encoder is None):
            return F.normalize(encoder.encode_text(tokens), dim=-1)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        query = self.encode_query(batch["reference"], batch["tokens"])
        target = self.encode_target(
            batch["target"], batch.get("target_caption"), frame_scores=batch.get("target_frame_scores")
        )
        return self.retrieval_losses(query, target, batch)

    def retrieval_losses(
        self, query: torch.Tensor, target: torch.Tensor, batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The baseline's loss terms for these queries and targets: the contrastive term, and the
        caption term with ``caption_weight``."""
        out = {"contrastive": self.contrastive(query, target)}
        if self.config.caption_weight > 0:
            captions = self.encode_caption(batch["target_caption"])
            out["caption"] = self.config.caption_weight * self.contrastive(query, captions)
        return out
