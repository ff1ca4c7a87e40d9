"""``composir synth``: write the synthetic benchmark in CIRR's published layout plus extra fields.

Scenes come in *families* of 6 images that share one reference (CIRR's img_set of 6 similar
images, so Recall_subset works as on CIRR):

- ``explicit``: the reference and 5 single-edit variants; each variant is the target of one
  triplet and a hard negative of the other four.
- ``multi``: the reference, the target of a 2-3 edit sentence, and partial applications of the
  edits (the hard negatives of ConText-CIR's contextual interference), filled up with single edits.
- ``implicit``: the reference, the target of a concept ("make it night"), the reference under two
  other concepts, filled up with single edits.

Everything drawn for a family comes from a generator seeded by (seed, split, family kind, index),
so output is identical for a seed however many worker processes render it.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from composir.data.media import write_video
from composir.data.synthetic import MCOT_FILE
from composir.synth import schemas as schema_bench
from composir.synth.concepts import concepts_for
from composir.synth.render import render_frames
from composir.synth.scenes import (
    EXPLICIT_KINDS,
    Edit,
    EditConflict,
    Scene,
    caption_levels,
    join_clauses,
    random_edit,
    random_scene,
)
from composir.utils.io import atomic_open, atomic_write_json
from composir.utils.progress import progress_bar

FAMILY_KINDS = ("explicit", "multi", "implicit")
SPLITS = ("train", "val", "test")
FAMILY_SIZE = 6
FORMAT_VERSION = 1


@dataclass
class SynthConfig:
    out: Path
    seed: int = 0
    size: int = 10_000  # triplets over all splits
    video: bool = False
    image_size: int = 64
    num_frames: int = 8
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    family_mix: dict[str, float] = field(default_factory=lambda: {"explicit": 0.4, "multi": 0.3, "implicit": 0.3})
    workers: int = 2
    # The schema benchmark (synth/schemas.py) on top of the families above.
    schemas: bool = False
    schema_appearances: int = 40  # training triplets per schema showing its complete scene
    schema_test_queries: int = 500  # per test bucket
    schema_val_queries: int = 50  # per val bucket


@dataclass
class FamilyPlan:
    members: list[Scene]
    triplets: list[dict[str, Any]]  # ref/target member indices, text, edit annotations


class _Members:
    """Distinct scenes of one family, in insertion order."""

    def __init__(self, reference: Scene):
        self.scenes = [reference]

    def add(self, scene: Scene) -> int | None:
        if scene in self.scenes or len(self.scenes) >= FAMILY_SIZE:
            return None
        self.scenes.append(scene)
        return len(self.scenes) - 1

    def fill(self, rng: np.random.Generator, kinds: tuple[str, ...]) -> None:
        for _ in range(50):
            if len(self.scenes) >= FAMILY_SIZE:
                return
            edit = random_edit(self.scenes[0], rng, kinds)
            if edit is not None:
                self.add(edit.apply(self.scenes[0]))


def _kinds(video: bool) -> tuple[str, ...]:
    return (*EXPLICIT_KINDS, "motion") if video else EXPLICIT_KINDS


def plan_explicit(rng: np.random.Generator, video: bool) -> FamilyPlan:
    reference = random_scene(rng, video)
    members = _Members(reference)
    triplets = []
    for _ in range(60):
        if len(members.scenes) >= FAMILY_SIZE:
            break
        edit = random_edit(reference, rng, _kinds(video))
        if edit is None:
            continue
        index = members.add(edit.apply(reference))
        if index is not None:
            triplets.append({"target": index, "text": edit.text(rng), "edits": [edit], "concrete": [edit.describe()]})
    return FamilyPlan(members.scenes, triplets)


def plan_multi(rng: np.random.Generator, video: bool) -> FamilyPlan:
    while True:
        reference = random_scene(rng, video, min_objects=2)
        n_edits = int(rng.integers(2, 4))
        scene, edits = reference, []
        touched: set = set()
        used_kinds: set[str] = set()
        for _ in range(n_edits):
            # One background edit and one add at most: two of either would overwrite each other.
            edit = random_edit(scene, rng, _kinds(video), touched, used_kinds & {"background", "add"})
            if edit is None:
                break
            scene = edit.apply(scene)
            edits.append(edit)
            used_kinds.add(edit.kind)
            if edit.target:
                touched.add(edit.target)
            touched |= scene.object_keys() - reference.object_keys()
        if len(edits) == n_edits and scene != reference:
            break
    members = _Members(reference)
    target = members.add(scene)
    negatives = []
    for r in range(len(edits) - 1, 0, -1):
        for subset in combinations(edits, r):
            partial = reference
            try:
                for edit in subset:
                    partial = edit.apply(partial)
            except EditConflict:
                continue
            index = members.add(partial)
            if index is not None:
                negatives.append(index)
    members.fill(rng, _kinds(video))
    text = join_clauses([e.text(rng) for e in edits])
    triplet = {
        "target": target,
        "text": text,
        "edits": edits,
        "concrete": [e.describe() for e in edits],
        "hard_negatives": negatives,
    }
    return FamilyPlan(members.scenes, [triplet])


def plan_implicit(rng: np.random.Generator, video: bool) -> FamilyPlan:
    concepts = concepts_for(video)
    while True:
        concept = concepts[rng.integers(len(concepts))]
        reference = concept.prepare(random_scene(rng, video), rng)
        try:
            target, concrete = concept.apply(reference)
        except EditConflict:
            continue
        if target != reference:
            break
    members = _Members(reference)
    target_index = members.add(target)
    negatives: list = []
    others = [c for c in concepts if c.name != concept.name]
    for k in rng.permutation(len(others)):
        if len(negatives) >= 2:
            break
        try:
            scene, _ = others[k].apply(reference)
        except EditConflict:
            continue
        index = members.add(scene)
        if index is not None:
            negatives.append(index)
    members.fill(rng, _kinds(video))
    text = concept.texts[rng.integers(len(concept.texts))]
    triplet = {
        "target": target_index,
        "text": text,
        "edits": [Edit("concept", None, concept.name)],
        "concrete": concrete,
        "concept": concept.name,
        "hard_negatives": negatives,
    }
    return FamilyPlan(members.scenes, [triplet])


PLANNERS = {"explicit": plan_explicit, "multi": plan_multi, "implicit": plan_implicit}


def _reasoning(concrete: list[str], concept: str | None) -> str:
    """What the request changes, in concrete steps (the chain's middle section). Neither the
    reference's caption (the first section) nor the request itself (in the prompt) is repeated: a
    quoted request is text the decoder copies from its prompt, not reasoning."""
    steps = join_clauses(concrete)
    if concept:
        return f"{concept} here means: {steps}. everything else stays."
    return f"{steps}. everything else stays."


# Per image its MCoT-stage captions and scene; paths; annotation entries.
FamilyOutput = tuple[dict[str, tuple[dict[str, str], dict[str, Any]]], dict[str, str], list[dict[str, Any]]]


def _family_task(
    args: tuple,
) -> tuple[dict[str, tuple[dict[str, str], dict[str, Any]]], dict[str, str], list[dict[str, Any]]]:
    cfg, split, kind, index = args
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), FAMILY_KINDS.index(kind), index])
    plan = PLANNERS[kind](rng, cfg.video)
    return _write_family(cfg, split, f"{split}-{kind[0]}{index:05d}", plan, kind, rng)


SCHEMA_JOBS = ("appearance", "implicit", "gate")


def _schema_task(
    args: tuple,
) -> tuple[dict[str, tuple[dict[str, str], dict[str, Any]]], dict[str, str], list[dict[str, Any]]]:
    cfg, split, job, schema_index, index = args
    schemas = schema_bench.make_schemas(cfg.seed)
    schema = schemas[schema_index]
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), 100 + SCHEMA_JOBS.index(job), schema_index, index])
    if job == "appearance":
        members, triplet = schema_bench.plan_appearance(rng, cfg.video, schemas, schema)
        family = "schema-appearance"
    else:
        members, triplet = schema_bench.plan_implicit(rng, cfg.video, schemas, schema, gate=job == "gate")
        family = "schema-gate" if job == "gate" else schema.bucket
    prefix = f"{split}-s{SCHEMA_JOBS.index(job)}{schema_index:02d}{index:04d}"
    return _write_family(cfg, split, prefix, FamilyPlan(members, [triplet]), family, rng)


def mcot_stages(levels: dict[str, str]) -> dict[str, str]:
    """The generator's three caption levels standing in for CSMCIR's MCoT stages (objects ->
    attributes -> scene -> final). Final = the attributes level: it names every cue the benchmark
    edits (colour, shape, size, background) and fits a 32-token text tower, the layout level does not."""
    a = levels["attributes"]
    return {"objects": levels["global"], "attributes": a, "scene": levels["layout"], "final": a}


def _run_task(
    args: tuple,
) -> tuple[dict[str, tuple[dict[str, str], dict[str, Any]]], dict[str, str], list[dict[str, Any]]]:
    return _schema_task(args[1:]) if args[0] == "schema" else _family_task(args[1:])


def _write_family(
    cfg: SynthConfig, split: str, prefix: str, plan: FamilyPlan, family: str, rng: np.random.Generator
) -> FamilyOutput:
    """Render a family's scenes; per image its MCoT-stage captions and scene, paths, annotation entries."""
    folder = Path(cfg.out) / split
    suffix = ".mp4" if cfg.video else ".png"
    names = [f"{prefix}-{m}" for m in range(len(plan.members))]
    paths: dict[str, str] = {}
    for name, scene in zip(names, plan.members):
        frames = render_frames(scene, cfg.image_size, cfg.num_frames if cfg.video else 1, rng)
        path = folder / f"{name}{suffix}"
        if cfg.video:
            write_video(path, frames)
        else:
            Image.fromarray(frames[0]).save(path, compress_level=1)
        paths[name] = f"./{split}/{name}{suffix}"
    captions = [caption_levels(s, cfg.video) for s in plan.members]
    mcot = {name: (mcot_stages(levels), scene.to_json()) for name, levels, scene in zip(names, captions, plan.members)}
    entries = []
    for t in plan.triplets:
        entry = {
            "reference": names[0],
            "target_hard": names[t["target"]],
            "target_soft": {names[t["target"]]: 1.0},
            "caption": t["text"],
            "img_set": {"members": names, "reference_rank": 0, "target_rank": t["target"]},
            "family": family,
            "concept": t.get("concept"),
            "edits": [e.to_json() for e in t["edits"]],
            "hard_negatives": [names[i] for i in t.get("hard_negatives", [])],
            "reference_captions": captions[0],
            "target_captions": captions[t["target"]],
            # CIR-CoT's chain: attribute-level captions (every cue the benchmark edits, no layout)
            # keep it short enough for a small language model to write at evaluation.
            "cot": {
                "caption": captions[0]["attributes"],
                "reasoning": _reasoning(t["concrete"], t.get("concept")),
                "conclusion": captions[t["target"]]["attributes"],
            },
            "target_scene": plan.members[t["target"]].to_json(),
            "reference_scene": plan.members[0].to_json(),
        }
        if "schema" in t:
            entry["schema"] = t["schema"]
        entries.append(entry)
    return mcot, paths, entries


def schema_tasks(cfg: SynthConfig) -> list[tuple]:
    """The schema benchmark's families: training appearances and shots; val/test buckets."""
    if not cfg.schemas:
        return []
    schemas = schema_bench.make_schemas(cfg.seed)
    tasks: list[tuple] = []
    for i, schema in enumerate(schemas):
        tasks += [("schema", "train", "appearance", i, j) for j in range(cfg.schema_appearances)]
        tasks += [("schema", "train", "implicit", i, j) for j in range(schema.shots)]
    for split, per_bucket in (("val", cfg.schema_val_queries), ("test", cfg.schema_test_queries)):
        for bucket in schema_bench.BUCKETS:
            if bucket == "schema-gate":
                chosen = [i for i, s in enumerate(schemas) if s.shots > 0]
            else:
                chosen = [i for i, s in enumerate(schemas) if s.bucket == bucket]
            job = "gate" if bucket == "schema-gate" else "implicit"
            per_schema = math.ceil(per_bucket / len(chosen))
            tasks += [("schema", split, job, i, j) for i in chosen for j in range(per_schema)]
    return tasks


def family_counts(cfg: SynthConfig) -> dict[str, dict[str, int]]:
    """Families per split and kind so that triplet counts follow the split fractions and the mix."""
    per_family = {"explicit": FAMILY_SIZE - 1, "multi": 1, "implicit": 1}
    counts = {}
    for split in SPLITS:
        n = cfg.size * cfg.split_fractions.get(split, 0.0)
        counts[split] = {k: math.ceil(n * cfg.family_mix.get(k, 0.0) / per_family[k]) if n else 0 for k in FAMILY_KINDS}
    return counts


def generate(cfg: SynthConfig, progress: bool = True) -> dict[str, Any]:
    out = Path(cfg.out)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    counts = family_counts(cfg)
    tasks = [
        ("family", cfg, split, kind, i) for split in SPLITS for kind in FAMILY_KINDS for i in range(counts[split][kind])
    ]
    tasks += [(tag, cfg, *rest) for tag, *rest in schema_tasks(cfg)]
    results: dict[str, tuple[dict[str, str], list[dict[str, Any]]]] = {s: ({}, []) for s in SPLITS}
    mcot: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    bar = progress_bar(total=len(tasks), desc="synth families", unit="fam", disable=not progress)
    pool = ctx.Pool(cfg.workers) if cfg.workers > 1 else None
    try:
        iterator = pool.imap(_run_task, tasks, chunksize=16) if pool else map(_run_task, tasks)
        for (_, _, split, *_), (captions, paths, entries) in zip(tasks, iterator):
            mcot.update(captions)
            results[split][0].update(paths)
            results[split][1].extend(entries)
            bar.update()
    finally:
        bar.close()
        if pool:
            pool.close()
            pool.join()
    summary: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": {**asdict(cfg), "out": str(out)}}
    set_id = 0
    for split in SPLITS:
        paths, entries = results[split]
        by_family: dict[tuple, int] = {}
        for pairid, entry in enumerate(entries):
            entry["pairid"] = pairid
            members = tuple(entry["img_set"]["members"])
            if members not in by_family:
                by_family[members] = set_id
                set_id += 1
            entry["img_set"]["id"] = by_family[members]
        atomic_write_json(out / "captions" / f"cap.rc2.{split}.json", entries)
        atomic_write_json(out / "image_splits" / f"split.rc2.{split}.json", paths)
        summary[split] = {
            "triplets": len(entries),
            "images": len(paths),
            **{kind: sum(e["family"] == kind for e in entries) for kind in FAMILY_KINDS},
            "schema": sum(e["family"].startswith("schema") for e in entries),
        }
    with atomic_open(out / "captions" / MCOT_FILE) as f:  # the caption cache `composir caption` would write
        for image_id, (stages, scene) in mcot.items():  # the scene: ground truth for pipelines that read captions
            record = {"id": image_id, "stages": stages, "model": "synthetic generator", "scene": scene}
            f.write(json.dumps(record) + "\n")
    if cfg.schemas:
        summary["schemas"] = [
            {**s.to_json(), "shots": s.shots, "bucket": s.bucket} for s in schema_bench.make_schemas(cfg.seed)
        ]
    atomic_write_json(out / "synthetic.json", summary, indent=2)
    return summary
