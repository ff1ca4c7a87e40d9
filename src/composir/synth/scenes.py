"""Scene model, concrete edits and multi-level captions of the synthetic benchmark.

A scene is a background plus 1-4 objects (shape, colour, size, cell of a 3x3 grid and, for
video, a motion). Objects are named by colour + shape, which is kept unique within a scene so
every modification text refers to exactly one object.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 60, 180),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES = ("small", "large")
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
MOTIONS = ("still", "left", "right", "up", "down")
# Backgrounds an explicit edit may pick; implicit concepts add their own (night, snow, ...).
PLAIN_BACKGROUNDS = ("gray", "beige", "pink", "light blue", "striped", "checkered", "dotted")
CONCEPT_BACKGROUNDS = ("night", "snow", "sand", "grass", "sunset")
BACKGROUNDS = PLAIN_BACKGROUNDS + CONCEPT_BACKGROUNDS


class EditConflict(ValueError):
    """An edit does not apply to this scene (object missing, cell taken, name clash)."""


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int
    motion: str = "still"

    @property
    def key(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]

    def find(self, key: tuple[str, str]) -> SceneObject:
        for obj in self.objects:
            if obj.key == key:
                return obj
        raise EditConflict(f"no {key[0]} {key[1]} in the scene")

    def free_cells(self) -> list[int]:
        taken = {o.cell for o in self.objects}
        return [c for c in range(9) if c not in taken]

    def object_keys(self) -> set[tuple[str, str]]:
        return {o.key for o in self.objects}

    def with_object(self, old: SceneObject, new: SceneObject | None) -> Scene:
        objects = [o for o in self.objects if o is not old]
        if new is not None:
            if new.key in {o.key for o in objects}:
                raise EditConflict(f"the scene already has a {new.name}")
            if new.cell in {o.cell for o in objects}:
                raise EditConflict(f"cell {CELLS[new.cell]} is taken")
            objects.append(new)
        return Scene(self.background, tuple(sorted(objects, key=lambda o: o.cell)))

    def to_json(self) -> dict[str, Any]:
        return {
            "background": self.background,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "cell": CELLS[o.cell], "motion": o.motion}
                for o in self.objects
            ],
        }


def random_scene(rng: np.random.Generator, video: bool, min_objects: int = 1, max_objects: int = 4) -> Scene:
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    objects: list[SceneObject] = []
    keys: set[tuple[str, str]] = set()
    colours = list(COLOURS)
    for cell in cells:
        while True:
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = colours[rng.integers(len(colours))]
            if (colour, shape) not in keys:
                break
        keys.add((colour, shape))
        motion = MOTIONS[rng.integers(len(MOTIONS))] if video else "still"
        objects.append(SceneObject(shape, colour, SIZES[rng.integers(2)], int(cell), motion))
    background = PLAIN_BACKGROUNDS[rng.integers(len(PLAIN_BACKGROUNDS))]
    return Scene(background, tuple(sorted(objects, key=lambda o: o.cell)))


# ----------------------------------------------------------------------------------------- edits
@dataclass(frozen=True)
class Edit:
    """One concrete change. ``target`` is the colour+shape key of the object in the reference."""

    kind: str
    target: tuple[str, str] | None
    value: Any

    def apply(self, scene: Scene) -> Scene:
        if self.kind == "background":
            if scene.background == self.value:
                raise EditConflict("background unchanged")
            return Scene(self.value, scene.objects)
        if self.kind == "add":
            return scene.with_object(None, self.value)
        obj = scene.find(self.target)
        if self.kind == "remove":
            return scene.with_object(obj, None)
        field = {"colour": "colour", "shape": "shape", "size": "size", "move": "cell", "motion": "motion"}[self.kind]
        if getattr(obj, field) == self.value:
            raise EditConflict(f"{field} unchanged")
        return scene.with_object(obj, replace(obj, **{field: self.value}))

    def describe(self) -> str:
        """Canonical wording, used in reasoning chains and as the first template."""
        name = f"the {self.target[0]} {self.target[1]}" if self.target else ""
        if self.kind == "colour":
            return f"make {name} {self.value}"
        if self.kind == "shape":
            return f"turn {name} into a {self.value}"
        if self.kind == "size":
            return f"make {name} {'bigger' if self.value == 'large' else 'smaller'}"
        if self.kind == "add":
            o = self.value
            return f"add a {o.size} {o.colour} {o.shape} in the {CELLS[o.cell]}"
        if self.kind == "remove":
            return f"remove {name}"
        if self.kind == "move":
            return f"move {name} to the {CELLS[self.value]}"
        if self.kind == "background":
            return f"change the background to {self.value}"
        if self.kind == "motion":
            return f"make {name} stay still" if self.value == "still" else f"make {name} move {self.value}"
        raise ValueError(self.kind)

    def text(self, rng: np.random.Generator) -> str:
        """A natural wording drawn from a few templates per kind."""
        name = f"the {self.target[0]} {self.target[1]}" if self.target else ""
        alternatives = {
            "colour": [f"change the colour of {name} to {self.value}", f"paint {name} {self.value}"],
            "shape": [f"replace {name} with a {self.target[0] if self.target else ''} {self.value}"],
            "size": [f"{'enlarge' if self.value == 'large' else 'shrink'} {name}"],
            "remove": [f"take away {name}", f"delete {name}"],
            "move": [f"put {name} in the {CELLS[self.value] if isinstance(self.value, int) else ''}"],
            "background": [f"use a {self.value} background", f"make the background {self.value}"],
            "add": [],
            "motion": [],
        }[self.kind]
        options = [self.describe(), *alternatives]
        return options[int(rng.integers(len(options)))]

    def to_json(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, SceneObject):
            value = {"shape": value.shape, "colour": value.colour, "size": value.size, "cell": CELLS[value.cell]}
        elif self.kind == "move":
            value = CELLS[value]
        return {"kind": self.kind, "target": " ".join(self.target) if self.target else None, "value": value}


EXPLICIT_KINDS = ("colour", "shape", "size", "add", "remove", "move", "background")


def random_edit(
    scene: Scene,
    rng: np.random.Generator,
    kinds: tuple[str, ...] = EXPLICIT_KINDS,
    touched: set[tuple[str, str]] | frozenset = frozenset(),
    exclude_kinds: set[str] | frozenset = frozenset(),
) -> Edit | None:
    """A valid random edit of ``scene`` on an object not in ``touched``; None if none fits."""
    order = [k for k in kinds if k not in exclude_kinds]
    rng.shuffle(order)
    untouched = [o for o in scene.objects if o.key not in touched]
    keys = scene.object_keys()
    for kind in order:
        if kind == "background":
            choices = [b for b in PLAIN_BACKGROUNDS if b != scene.background]
            return Edit("background", None, choices[rng.integers(len(choices))])
        if kind == "add":
            free = scene.free_cells()
            if not free or len(scene.objects) >= 5:
                continue
            for _ in range(10):
                obj = SceneObject(
                    SHAPES[rng.integers(len(SHAPES))],
                    list(COLOURS)[rng.integers(len(COLOURS))],
                    SIZES[rng.integers(2)],
                    int(free[rng.integers(len(free))]),
                    "still",
                )
                if obj.key not in keys:
                    return Edit("add", None, obj)
            continue
        if not untouched:
            continue
        obj = untouched[rng.integers(len(untouched))]
        if kind == "remove":
            if len(scene.objects) < 2:
                continue
            return Edit("remove", obj.key, None)
        if kind == "colour":
            options = [c for c in COLOURS if c != obj.colour and (c, obj.shape) not in keys]
            if options:
                return Edit("colour", obj.key, options[rng.integers(len(options))])
        elif kind == "shape":
            options = [s for s in SHAPES if s != obj.shape and (obj.colour, s) not in keys]
            if options:
                return Edit("shape", obj.key, options[rng.integers(len(options))])
        elif kind == "size":
            return Edit("size", obj.key, "small" if obj.size == "large" else "large")
        elif kind == "move":
            free = scene.free_cells()
            if free:
                return Edit("move", obj.key, int(free[rng.integers(len(free))]))
        elif kind == "motion":
            options = [m for m in MOTIONS if m != obj.motion]
            return Edit("motion", obj.key, options[rng.integers(len(options))])
    return None


def join_clauses(clauses: list[str]) -> str:
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


# -------------------------------------------------------------------------------------- captions
def _object_phrase(o: SceneObject, with_size: bool, with_cell: bool, with_motion: bool) -> str:
    words = [o.size] if with_size else []
    words += [o.colour, o.shape]
    phrase = "a " + " ".join(words)
    if with_cell:
        phrase += f" in the {CELLS[o.cell]}"
    if with_motion and o.motion != "still":
        phrase += f" moving {o.motion}"
    return phrase


def caption_levels(scene: Scene, video: bool) -> dict[str, str]:
    """Three levels of detail (CSMCIR-style multi-level captions): global, attributes, layout.

    Only the layout level says where things are: the others name the objects in an order of their
    own (shape, colour, size), never the grid's, so that their word order leaks no layout."""
    bg = f"on a {scene.background} background"
    if not scene.objects:
        empty = f"an empty scene {bg}"
        return {"global": empty, "attributes": empty, "layout": empty}
    unplaced = sorted(scene.objects, key=lambda o: (o.shape, o.colour, o.size))
    return {
        "global": join_clauses([_object_phrase(o, False, False, False) for o in unplaced]) + f" {bg}",
        "attributes": join_clauses([_object_phrase(o, True, False, False) for o in unplaced]) + f" {bg}",
        "layout": join_clauses([_object_phrase(o, True, True, video) for o in scene.objects]) + f" {bg}",
    }
