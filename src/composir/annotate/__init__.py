"""Writing annotations: captions and reasoning chains from a multimodal LLM behind an
OpenAI-compatible endpoint (``client``, ``captions``, ``chains``), and training triplets made from
captioned images (``triplets``)."""
