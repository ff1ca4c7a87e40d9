"""``composir make-triplets``: training triplets from captioned images (ConText-CIR's synthetic pipeline).

From a folder of images and their captions (the cache ``composir caption`` writes, or any file in
that format), each reference caption is edited at one noun phrase -- *swap* it for a phrase seen
in another caption, *remove* it, or *add* one -- and the edit is said in words ("replace the red
dress with a blue shirt", "remove the hat", "add a small dog"); the phrases swapped in or added
come from the reference's 20 nearest images (most shared phrases): first the edits that turn its
phrase set into a neighbour's exactly, then random ones with the neighbours' phrases, so edits
point at what the collection holds, as CIRR built its sets from similar images. The target is the image whose
caption (``match: captions``, Jaccard of the noun-phrase sets) or whose picture (``match: model``, a
trained run's text -> image similarity) best fits the edited caption; a pair is kept when that
score reaches ``threshold`` and the target is not the reference. The next-best candidates fill
the triplet's img_set (CIRR's 6 members: hard negatives for training and Recall_subset). Written
in the CIRR layout (captions/cap.rc2.<split>.json, image_splits/split.rc2.<split>.json) so that
``--benchmark cirr --root OUT`` trains and evaluates on it unchanged; references are split
90 / 10 into train / val, every image is in both galleries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from composir.data.captions import read_captions
from composir.data.media import media_type_of
from composir.data.noun_phrases import NounPhrases
from composir.errors import ConfigError
from composir.utils.io import atomic_write_json, is_utf8
from composir.utils.progress import progress_bar

ARTICLES = ("the ", "a ", "an ")


@dataclass
class TripletConfig:
    images: Path
    captions: Path
    out: Path
    match: str = "captions"  # captions | model
    run: Path | None = None  # the trained run for match=model
    threshold: float = 0.99  # captions: Jaccard of noun-phrase sets; model: cosine
    per_image: int = 2  # edits tried per reference
    stage: str = "final"  # which caption stage of the cache
    seed: int = 0
    val_fraction: float = 0.1


def phrase_key(phrase: str) -> str:
    """A noun phrase without its leading article, lower-case: "The red dress" -> "red dress"."""
    p = phrase.strip().lower()
    for article in ARTICLES:
        if p.startswith(article):
            return p[len(article) :]
    return p


@dataclass
class Edit:
    kind: str  # swap | remove | add
    text: str  # the modification text
    phrases: frozenset[str]  # the edited caption's noun phrases (article-free)
    caption: str  # the edited caption


def neighbour_edits(caption: str, spans: list[tuple[int, int]], neighbours: list[frozenset[str]]) -> list[Edit]:
    """The one-phrase edits that turn ``caption``'s phrase set into a neighbour's exactly (swap,
    add or remove one phrase), each once, nearest neighbour first."""
    phrases = [caption[a:b] for a, b in spans]
    keys = [phrase_key(p) for p in phrases]
    mine = frozenset(keys)
    edits: dict[str, Edit] = {}
    for other in neighbours:
        new, gone = sorted(other - mine), sorted(mine - other)
        if len(new) == 1 and len(gone) == 1:
            i = keys.index(gone[0])
            a, b = spans[i]
            text = f"replace {phrases[i]} with a {new[0]}"
            edits.setdefault(text, Edit("swap", text, other, caption[:a] + f"a {new[0]}" + caption[b:]))
        elif len(new) == 1 and not gone:
            edits.setdefault(f"add a {new[0]}", Edit("add", f"add a {new[0]}", other, f"{caption} and a {new[0]}"))
        elif len(gone) == 1 and not new and len(keys) > 1:
            i = keys.index(gone[0])
            a, b = spans[i]
            text = f"remove {phrases[i]}"
            edits.setdefault(text, Edit("remove", text, other, (caption[:a] + caption[b:]).replace("  ", " ")))
    return list(edits.values())


def propose_edits(
    caption: str, spans: list[tuple[int, int]], inventory: list[str], rng: np.random.Generator, n: int
) -> list[Edit]:
    """Up to ``n`` distinct random one-phrase edits of ``caption`` (phrases from ``inventory`` to swap in or add)."""
    phrases = [caption[a:b] for a, b in spans]
    keys = [phrase_key(p) for p in phrases]
    kinds = ["add"] + (["swap"] if phrases else []) + (["remove"] if len(phrases) > 1 else [])
    edits: dict[str, Edit] = {}
    for _ in range(4 * n):
        if len(edits) >= n:
            break
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "add":
            new = inventory[int(rng.integers(len(inventory)))]
            if new in keys:
                continue
            added = Edit(kind, f"add a {new}", frozenset([*keys, new]), f"{caption} and a {new}")
            edits.setdefault(f"add {new}", added)
            continue
        i = int(rng.integers(len(phrases)))
        a, b = spans[i]
        if kind == "remove":
            rest = keys[:i] + keys[i + 1 :]
            edited = (caption[:a] + caption[b:]).replace("  ", " ")
            edits.setdefault(f"remove {keys[i]}", Edit(kind, f"remove {phrases[i]}", frozenset(rest), edited))
        else:
            new = inventory[int(rng.integers(len(inventory)))]
            if new in keys:
                continue
            swapped = [*keys[:i], new, *keys[i + 1 :]]
            text = f"replace {phrases[i]} with a {new}"
            edits.setdefault(text, Edit(kind, text, frozenset(swapped), caption[:a] + f"a {new}" + caption[b:]))
    return list(edits.values())


class PhraseIndex:
    """Images' noun-phrase sets as a sparse image x phrase matrix: the Jaccard score of one phrase
    set against every image is one sparse product (not a loop over the gallery)."""

    def __init__(self, sets: list[frozenset[str]]):
        import torch

        self.vocab = {p: i for i, p in enumerate(sorted({p for s in sets for p in s}))}
        rows = [r for r, s in enumerate(sets) for _ in s]
        cols = [self.vocab[p] for s in sets for p in s]
        values = torch.ones(len(rows))
        shape = (len(sets), len(self.vocab))
        with torch.sparse.check_sparse_tensor_invariants():
            self.matrix = torch.sparse_coo_tensor(torch.tensor([rows, cols]), values, shape).coalesce()
        self.sizes = torch.tensor([len(s) for s in sets], dtype=torch.float32)

    def jaccard(self, phrases: frozenset[str]) -> np.ndarray:
        import torch

        known = [self.vocab[p] for p in phrases if p in self.vocab]
        query = torch.zeros(len(self.vocab), 1)
        query[known] = 1.0
        inter = (self.matrix @ query).squeeze(1)
        return (inter / (len(phrases) + self.sizes - inter).clamp_min(1.0)).numpy()


def _model_scorer(run: Path, paths: list[Path]):
    """text -> image cosine with a trained run's encoder (images embedded once)."""
    import torch

    from composir.data.media import load_media
    from composir.runs import load_run

    method, _ = load_run(run)
    enc = method.eval().encoder
    with torch.no_grad():
        feats = []
        for i in progress_bar(range(0, len(paths), 64), desc="gallery", unit="batch", leave=False):
            media = [load_media(p, 1) for p in paths[i : i + 64]]
            frames = torch.stack([torch.stack([enc.preprocess(f) for f in item]) for item in media])
            feats.append(torch.nn.functional.normalize(enc.encode_image(frames), dim=-1))
        gallery = torch.cat(feats)

    def score(captions: list[str]) -> np.ndarray:
        with torch.no_grad():
            text = torch.nn.functional.normalize(enc.encode_text(enc.tokenize(captions)), dim=-1)
            return (text @ gallery.T).numpy()

    return score


def make_triplets(cfg: TripletConfig, progress: bool = True) -> dict[str, int]:
    """Write the CIRR-layout triplets; returns counts (images, edits tried, kept per split)."""
    if cfg.match not in ("captions", "model") or (cfg.match == "model" and cfg.run is None):
        raise ConfigError("--match must be captions, or model with --run")
    _check_paths(cfg)
    captions, skipped = usable_captions(read_captions(cfg.captions, cfg.stage))
    files = {p.stem: p for p in sorted(Path(cfg.images).iterdir()) if media_type_of(p) and p.stem in captions}
    for stem, path in list(files.items()):
        problem = _unreadable(path)
        if problem:
            skipped.append({"id": stem, "file": path.name, "error": problem})
            del files[stem]
    ids = list(files)
    spans = NounPhrases()([captions[i] for i in ids])
    for i, s in zip(list(ids), spans):
        if not s:  # nothing to edit: "..." or "hello!" names no object
            skipped.append({"id": i, "error": "the caption names no noun phrase"})
    keep = [k for k, s in enumerate(spans) if s]
    ids, spans = [ids[k] for k in keep], [spans[k] for k in keep]
    if len(ids) < 2:
        raise ConfigError(f"{cfg.images}: fewer than 2 readable images with a usable caption in {cfg.captions}")
    phrase_sets = [frozenset(phrase_key(captions[i][a:b]) for a, b in s) for i, s in zip(ids, spans)]
    inventory = sorted({p for s in phrase_sets for p in s})
    model_score = _model_scorer(cfg.run, [files[i] for i in ids]) if cfg.match == "model" else None
    index = PhraseIndex(phrase_sets)
    rng = np.random.default_rng(cfg.seed)
    val = set(rng.choice(len(ids), size=max(1, int(cfg.val_fraction * len(ids))), replace=False).tolist())
    entries: dict[str, list[dict]] = {"train": [], "val": []}
    tried = 0
    for r in progress_bar(range(len(ids)), desc="triplets", unit="image", disable=not progress):
        # Phrases to swap in or add come from the reference's nearest images (most shared phrases):
        # edits toward what the collection holds, as CIRR built its sets from similar images.
        near = index.jaccard(phrase_sets[r])
        near[r] = -1.0
        nearest = np.argsort(-near, kind="stable")[:20]
        edits = neighbour_edits(captions[ids[r]], spans[r], [phrase_sets[j] for j in nearest])
        rng.shuffle(edits)
        edits = edits[: cfg.per_image]
        if len(edits) < cfg.per_image:  # no one-phrase neighbour: random edits with the neighbours' phrases
            local = sorted({p for j in nearest for p in phrase_sets[j]} - phrase_sets[r]) or inventory
            edits += propose_edits(captions[ids[r]], spans[r], local, rng, cfg.per_image - len(edits))
        tried += len(edits)
        if not edits:
            continue
        if model_score is not None:
            scores = model_score([e.caption for e in edits])
        else:
            scores = np.stack([index.jaccard(e.phrases) for e in edits])
        for edit, row in zip(edits, scores):
            row = row.copy()
            row[r] = -np.inf  # never the reference itself
            order = np.argsort(-row, kind="stable")
            if row[order[0]] < cfg.threshold:
                continue
            split = "val" if r in val else "train"
            members = [ids[r], *(ids[j] for j in order[:5])]
            entries[split].append(
                {
                    "pairid": sum(len(v) for v in entries.values()),
                    "reference": ids[r],
                    "target_hard": ids[order[0]],
                    "target_soft": {ids[order[0]]: 1.0},
                    "caption": edit.text,
                    "img_set": {"id": r, "members": members, "reference_rank": 0, "target_rank": 1},
                    "edit": edit.kind,
                    "score": float(row[order[0]]),
                }
            )
    paths = {i: str(Path(files[i]).resolve()) for i in ids}
    out = Path(cfg.out)
    for split, items in entries.items():
        atomic_write_json(out / "captions" / f"cap.rc2.{split}.json", items)
        atomic_write_json(out / "image_splits" / f"split.rc2.{split}.json", paths)
    if skipped:
        atomic_write_json(out / "skipped.json", skipped, indent=1)
    return {"images": len(ids), "edits": tried, "train": len(entries["train"]), "val": len(entries["val"]),
            "skipped": len(skipped)}  # fmt: skip


MAX_CAPTION_CHARS = 2_000  # a caption is a sentence or two; longer text is not one


def usable_captions(captions: dict[str, str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(captions fit to parse, the others with the reason): not empty, not huge, valid text."""
    ok, skipped = {}, []
    for key, text in captions.items():
        if not text.strip():
            skipped.append({"id": key, "error": "empty caption"})
        elif len(text) > MAX_CAPTION_CHARS:
            skipped.append({"id": key, "error": f"caption of {len(text)} characters (limit {MAX_CAPTION_CHARS})"})
        elif not is_utf8(text):
            skipped.append({"id": key, "error": "caption is not valid text (lone surrogates)"})
        else:
            ok[key] = text
    return ok, skipped


def _unreadable(path: Path) -> str | None:
    """Why a file cannot be a triplet's image (checked from its data, without a full decode), or None."""
    from PIL import Image, UnidentifiedImageError

    if media_type_of(path) != "image":
        return None  # videos are checked when their frames are read
    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"unreadable image ({exc})"
    return None


def _check_paths(cfg: TripletConfig) -> None:
    if not Path(cfg.images).is_dir():
        raise ConfigError(f"--images {cfg.images}: not a folder")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise ConfigError(f"--out {cfg.out}: is a file, not a folder")
