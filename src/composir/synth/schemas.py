"""The schema benchmark (``composir synth --schemas``): can a method learn what a *name* implies?

24 schemas, each a constellation of 2-4 co-occurring cues (coloured objects, a background),
drawn per seed. Training shows each schema's complete scene as the target of explicit edits whose
text lists the cues but never names the schema ("add a red circle and use a pink background"):
where a prototype library could learn the constellation. Implicit triplets ("make it a
birthday") take a reference holding 0-1 cues to the full set; each schema gets a fixed number of
them in training -- 1, 4, 16 or 64 (five schemas per level) -- and four *grounding-transfer*
schemas get none: their name appears only inside explicit paraphrases ("add a red circle and a
blue square, like a birthday"), and the test asks with the name alone.

Test buckets (the ``family`` of each query, so evaluation reports each one): ``schema-1shot``,
``schema-4shot``, ``schema-16shot``, ``schema-64shot``, ``schema-transfer``, and
``schema-gate``: references that carry *another* schema's complete constellation (does the
method still add the asked-for one?). Every test reference is new. Hard negatives in each img_set:
the target minus one cue, and the reference completed to other schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from composir.synth.scenes import (
    COLOURS,
    MOTIONS,
    PLAIN_BACKGROUNDS,
    SHAPES,
    SIZES,
    Edit,
    EditConflict,
    Scene,
    SceneObject,
    join_clauses,
    random_edit,
    random_scene,
)

SCHEMA_NAMES = (
    "birthday", "harbour", "circus", "orchard", "carnival", "picnic", "wedding", "festival",
    "regatta", "bazaar", "safari", "arcade", "museum", "rodeo", "concert", "market",
    "parade", "garden", "workshop", "library", "stadium", "aquarium", "theatre", "campsite",
)  # fmt: skip
SHOT_LEVELS = (1, 4, 16, 64)
PER_LEVEL = 5  # schemas per shot level; the remaining 4 are grounding-transfer schemas
BUCKETS = ("schema-1shot", "schema-4shot", "schema-16shot", "schema-64shot", "schema-transfer", "schema-gate")
IMPLICIT_TEMPLATES = ("make it a {}", "turn it into a {} scene", "give it a {} look", "make this a {}")


@dataclass(frozen=True)
class Schema:
    name: str
    objects: tuple[tuple[str, str], ...]  # (colour, shape) cues
    background: str | None
    shots: int  # implicit training triplets; 0 for a grounding-transfer schema

    @property
    def bucket(self) -> str:
        return "schema-transfer" if self.shots == 0 else f"schema-{self.shots}shot"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "objects": [list(o) for o in self.objects], "background": self.background}


def make_schemas(seed: int) -> list[Schema]:
    """24 distinct constellations of 2-4 cues (1-3 objects, maybe a background) for this seed."""
    rng = np.random.default_rng([seed, 24_601])
    shots = [s for s in SHOT_LEVELS for _ in range(PER_LEVEL)]
    shots += [0] * (len(SCHEMA_NAMES) - len(shots))
    schemas, seen = [], set()
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    for name, n_shots in zip(SCHEMA_NAMES, shots):
        while True:
            n_cues = int(rng.integers(2, 5))
            with_background = n_cues > 1 and rng.random() < 0.5
            n_objects = n_cues - int(with_background)
            chosen = rng.choice(len(pairs), size=n_objects, replace=False)
            objects = tuple(sorted(pairs[i] for i in chosen))
            background = PLAIN_BACKGROUNDS[rng.integers(len(PLAIN_BACKGROUNDS))] if with_background else None
            if (objects, background) not in seen:
                seen.add((objects, background))
                break
        schemas.append(Schema(name, objects, background, n_shots))
    return schemas


def completing_edits(scene: Scene, schema: Schema, rng: np.random.Generator, video: bool) -> list[Edit]:
    """The explicit edits that turn ``scene`` into one holding every cue of ``schema``."""
    edits: list[Edit] = []
    free = list(scene.free_cells())
    rng.shuffle(free)
    have = scene.object_keys()
    for colour, shape in schema.objects:
        if (colour, shape) in have:
            continue
        if not free:
            raise EditConflict("no free cell for a schema object")
        motion = MOTIONS[rng.integers(len(MOTIONS))] if video else "still"
        edits.append(Edit("add", None, SceneObject(shape, colour, SIZES[rng.integers(2)], int(free.pop()), motion)))
    if schema.background is not None and scene.background != schema.background:
        edits.append(Edit("background", None, schema.background))
    return edits


def apply_all(scene: Scene, edits: list[Edit]) -> Scene:
    for edit in edits:
        scene = edit.apply(scene)
    return scene


def plain_reference(schemas: list[Schema], schema: Schema, rng: np.random.Generator, video: bool, cues: int) -> Scene:
    """A new random scene with 1-2 objects that are no schema's cues, then ``cues`` of ``schema``'s."""
    forbidden = {o for s in schemas for o in s.objects}
    while True:
        scene = random_scene(rng, video, min_objects=1, max_objects=2)
        if scene.object_keys() & forbidden:
            continue
        if scene.background == schema.background:  # the cues it holds are only the ones added below
            others = [b for b in PLAIN_BACKGROUNDS if b != schema.background]
            scene = Scene(others[rng.integers(len(others))], scene.objects)
        if cues:
            edits = completing_edits(scene, schema, rng, video)
            rng.shuffle(edits)
            scene = apply_all(scene, edits[:cues])
        return scene


def _members_with_negatives(reference: Scene, target: Scene, negatives: list[Scene], rng, video, size: int = 6):
    members = [reference, target]
    negative_index = []
    for scene in negatives:
        if scene not in members and len(members) < size:
            members.append(scene)
            negative_index.append(len(members) - 1)
    for _ in range(50):  # fill the img_set with single edits of the reference, as other families do
        if len(members) >= size:
            break
        edit = random_edit(reference, rng, ("colour", "size", "move", "add"))
        if edit is not None:
            scene = edit.apply(reference)
            if scene not in members:
                members.append(scene)
    return members, negative_index


def plan_implicit(
    rng: np.random.Generator, video: bool, schemas: list[Schema], schema: Schema, gate: bool = False
) -> tuple[list[Scene], dict[str, Any]]:
    """ "make it a <schema>": a reference with 0-1 cues (``gate``: another schema's full set)."""
    while True:
        try:
            if gate:
                others = [s for s in schemas if s.name != schema.name and s.shots > 0]
                other = others[rng.integers(len(others))]
                base = plain_reference(schemas, other, rng, video, cues=0)
                reference = apply_all(base, completing_edits(base, other, rng, video))
            else:
                reference = plain_reference(schemas, schema, rng, video, cues=int(rng.integers(0, 2)))
            edits = completing_edits(reference, schema, rng, video)
            if not edits:
                continue
            target = apply_all(reference, edits)
            break
        except EditConflict:
            continue
    negatives = [apply_all(reference, [e for e in edits if e is not dropped]) for dropped in edits[:2]]
    for k in rng.permutation(len(schemas)):
        other = schemas[k]
        if other.name == schema.name or len(negatives) >= 4:
            continue
        try:
            negatives.append(apply_all(reference, completing_edits(reference, other, rng, video)))
        except EditConflict:
            continue
    members, negative_index = _members_with_negatives(reference, target, negatives, rng, video)
    text = IMPLICIT_TEMPLATES[rng.integers(len(IMPLICIT_TEMPLATES))].format(schema.name)
    triplet = {
        "target": 1,
        "text": text,
        "edits": [Edit("concept", None, schema.name)],
        "concrete": [e.describe() for e in edits],
        "concept": schema.name,
        "hard_negatives": negative_index,
        "schema": schema.to_json(),
    }
    return members, triplet


def plan_appearance(
    rng: np.random.Generator, video: bool, schemas: list[Schema], schema: Schema
) -> tuple[list[Scene], dict[str, Any]]:
    """The schema's complete scene as the target of explicit edits that list its cues; the text
    names the schema only for a grounding-transfer schema (", like a birthday")."""
    while True:
        try:
            reference = plain_reference(schemas, schema, rng, video, cues=int(rng.integers(0, 2)))
            edits = completing_edits(reference, schema, rng, video)
            if edits:
                target = apply_all(reference, edits)
                break
        except EditConflict:
            continue
    negatives = [apply_all(reference, [e for e in edits if e is not dropped]) for dropped in edits[:2]]
    members, negative_index = _members_with_negatives(reference, target, negatives, rng, video)
    text = join_clauses([e.text(rng) for e in edits])
    if schema.shots == 0:
        text += f", like a {schema.name}"
    triplet = {
        "target": 1,
        "text": text,
        "edits": edits,
        "concrete": [e.describe() for e in edits],
        "hard_negatives": negative_index,
        "schema": schema.to_json(),
    }
    return members, triplet
