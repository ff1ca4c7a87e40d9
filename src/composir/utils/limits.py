"""Limits shared by the configuration checks and the command line (kept free of heavy imports:
every CLI start reads them)."""

# Frames sampled per video at most: past it a short video is decoded into that many repeated
# frames (memory for nothing); the peers use 8 to 32 (CoVR-2's targets: 15).
MAX_FRAMES = 256
