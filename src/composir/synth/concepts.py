"""Implicit modifications: a lexicon of concepts, each bound to concrete edits (schema imagery).

The text names only the concept ("make it night"); what it implies visually is fixed by the
concept's program. ``prepare`` makes a reference scene one the concept can act on (e.g. puts a
green circle in it for "ripen the fruit"); ``apply`` returns the target and the concrete edits,
which the reasoning chains spell out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from composir.synth.scenes import EditConflict, Scene, SceneObject


@dataclass(frozen=True)
class Concept:
    name: str
    texts: tuple[str, ...]
    prepare: Callable[[Scene, np.random.Generator], Scene]
    apply: Callable[[Scene], tuple[Scene, list[str]]]
    video_only: bool = False


def _background(bg: str) -> Callable[[Scene], tuple[Scene, list[str]]]:
    def apply(scene: Scene) -> tuple[Scene, list[str]]:
        if scene.background == bg:
            raise EditConflict("already")
        return Scene(bg, scene.objects), [f"change the background to {bg}"]

    return apply


def _identity(scene: Scene, rng: np.random.Generator) -> Scene:
    return scene


def _map_objects(fn: Callable[[SceneObject], SceneObject], what: str) -> Callable:
    def apply(scene: Scene) -> tuple[Scene, list[str]]:
        new = tuple(sorted((fn(o) for o in scene.objects), key=lambda o: o.cell))
        if new == scene.objects:
            raise EditConflict("no change")
        return Scene(scene.background, new), [what]

    return apply


def _ensure(obj_filter: Callable[[SceneObject], bool], make: Callable[[np.random.Generator], SceneObject]):
    """Prepare step: add an object satisfying ``obj_filter`` when the scene has none."""

    def prepare(scene: Scene, rng: np.random.Generator) -> Scene:
        if any(obj_filter(o) for o in scene.objects):
            return scene
        free = scene.free_cells()
        if not free:
            scene = Scene(scene.background, scene.objects[1:])
            free = scene.free_cells()
        obj = replace(make(rng), cell=int(free[rng.integers(len(free))]))
        try:
            return scene.with_object(None, obj)
        except EditConflict:
            return Scene(scene.background, (obj,))

    return prepare


def _traffic_light(scene: Scene) -> tuple[Scene, list[str]]:
    lights = (
        SceneObject("circle", "red", "small", 1),
        SceneObject("circle", "yellow", "small", 4),
        SceneObject("circle", "green", "small", 7),
    )
    return Scene(scene.background, lights), [
        "replace everything with a red circle at the top, a yellow circle in the center "
        "and a green circle at the bottom"
    ]


def _gravity(scene: Scene) -> tuple[Scene, list[str]]:
    by_column: dict[int, list[SceneObject]] = {}
    for o in scene.objects:
        by_column.setdefault(o.cell % 3, []).append(o)
    moved = []
    for column, objs in by_column.items():
        objs.sort(key=lambda o: -(o.cell // 3))  # lowest first keeps its place in the stack
        for level, o in enumerate(objs):
            moved.append(replace(o, cell=(2 - level) * 3 + column, motion="still"))
    new = tuple(sorted(moved, key=lambda o: o.cell))
    if new == scene.objects:
        raise EditConflict("nothing falls")
    return Scene(scene.background, new), ["move every object down to the bottom row of its column"]


def _prepare_gravity(scene: Scene, rng: np.random.Generator) -> Scene:
    if any(o.cell < 6 for o in scene.objects):
        return scene
    o = scene.objects[0]
    return scene.with_object(o, replace(o, cell=o.cell % 3))


def _mirror(scene: Scene) -> tuple[Scene, list[str]]:
    new = tuple(
        sorted((replace(o, cell=(o.cell // 3) * 3 + 2 - o.cell % 3) for o in scene.objects), key=lambda o: o.cell)
    )
    if new == scene.objects:
        raise EditConflict("symmetric already")
    return Scene(scene.background, new), ["swap the left and right columns"]


def _prepare_mirror(scene: Scene, rng: np.random.Generator) -> Scene:
    if any(o.cell % 3 != 1 for o in scene.objects):
        return scene
    o = scene.objects[0]
    target = (o.cell // 3) * 3
    if target in {x.cell for x in scene.objects}:
        return scene
    return scene.with_object(o, replace(o, cell=target))


def _prepare_grow(scene: Scene, rng: np.random.Generator) -> Scene:
    if any(o.size == "small" for o in scene.objects):
        return scene
    o = scene.objects[0]
    return scene.with_object(o, replace(o, size="small"))


def _prepare_recolour(avoid: str):
    def prepare(scene: Scene, rng: np.random.Generator) -> Scene:
        if any(o.colour != avoid for o in scene.objects):
            return scene
        o = scene.objects[0]
        return Scene(scene.background, tuple(replace(x, colour="blue") if x is o else x for x in scene.objects))

    return prepare


def _prepare_moving(scene: Scene, rng: np.random.Generator) -> Scene:
    if any(o.motion != "still" for o in scene.objects):
        return scene
    o = scene.objects[0]
    return scene.with_object(o, replace(o, motion="left"))


def _ripen(scene: Scene) -> tuple[Scene, list[str]]:
    apply = _map_objects(
        lambda o: replace(o, colour="red") if o.key == ("green", "circle") else o, "make the green circle red"
    )
    if ("red", "circle") in scene.object_keys():
        raise EditConflict("a red circle exists already")
    return apply(scene)


def _prepare_ripen(scene: Scene, rng: np.random.Generator) -> Scene:
    scene = Scene(scene.background, tuple(o for o in scene.objects if o.key != ("red", "circle")))
    return _ensure(lambda o: o.key == ("green", "circle"), lambda r: SceneObject("circle", "green", "small", 0))(
        scene, rng
    )


def _sun(scene: Scene) -> tuple[Scene, list[str]]:
    sun = SceneObject("circle", "yellow", "large", 2)
    return scene.with_object(None, sun), ["add a large yellow circle in the top right"]


def _prepare_sun(scene: Scene, rng: np.random.Generator) -> Scene:
    objs = tuple(o for o in scene.objects if o.cell != 2 and o.key != ("yellow", "circle"))
    if not objs:
        objs = (SceneObject("square", "blue", "small", 7),)
    return Scene(scene.background, objs)


def _clear(scene: Scene) -> tuple[Scene, list[str]]:
    if not scene.objects:
        raise EditConflict("empty already")
    return Scene(scene.background, ()), ["remove every object"]


CONCEPTS: tuple[Concept, ...] = (
    Concept("night", ("make it night", "show it at night", "make it nighttime"), _identity, _background("night")),
    Concept("winter", ("make it winter", "let it snow", "cover it in snow"), _identity, _background("snow")),
    Concept("beach", ("take it to the beach", "put it on the beach"), _identity, _background("sand")),
    Concept("meadow", ("put it in a meadow", "move it to the countryside"), _identity, _background("grass")),
    Concept("dusk", ("make it dusk", "show it at sunset"), _identity, _background("sunset")),
    Concept("traffic light", ("make it a traffic light", "turn it into a traffic light"), _identity, _traffic_light),
    Concept("gravity", ("let everything fall down", "turn gravity on"), _prepare_gravity, _gravity),
    Concept("mirror", ("mirror the scene", "show its reflection in a mirror"), _prepare_mirror, _mirror),
    Concept(
        "grow",
        ("let everything grow up", "feed them until they are grown"),
        _prepare_grow,
        _map_objects(lambda o: replace(o, size="large"), "make every object large"),
    ),
    Concept(
        "freeze",
        ("freeze everything", "turn it all to ice"),
        _prepare_recolour("white"),
        _map_objects(lambda o: replace(o, colour="white"), "make every object white"),
    ),
    Concept(
        "fire",
        ("set it on fire", "make it burn"),
        _prepare_recolour("orange"),
        _map_objects(lambda o: replace(o, colour="orange"), "make every object orange"),
    ),
    Concept("ripen", ("let the fruit ripen", "wait until the apple is ripe"), _prepare_ripen, _ripen),
    Concept("sunrise", ("let the sun rise", "make it a sunny day"), _prepare_sun, _sun),
    Concept("clear", ("clean it all up", "tidy everything away"), _identity, _clear),
    Concept(
        "pause",
        ("pause it", "freeze time"),
        _prepare_moving,
        _map_objects(lambda o: replace(o, motion="still"), "make every object stay still"),
        video_only=True,
    ),
    Concept(
        "wind",
        ("let a strong wind blow from the left", "let the wind push everything"),
        _identity,
        _map_objects(lambda o: replace(o, motion="right"), "make every object move right"),
        video_only=True,
    ),
)


def concepts_for(video: bool) -> tuple[Concept, ...]:
    return tuple(c for c in CONCEPTS if video or not c.video_only)
