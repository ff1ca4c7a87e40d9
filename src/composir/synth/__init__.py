"""The synthetic composed-retrieval benchmark: procedural scenes, edits, captions and rendering."""

from composir.synth.generate import SynthConfig, generate

__all__ = ["SynthConfig", "generate"]
