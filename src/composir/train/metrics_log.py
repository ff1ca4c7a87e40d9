"""Metrics CSV (long format: step, split, metric, value) and its PNG plot."""

from __future__ import annotations

import csv
from pathlib import Path

from composir.utils.io import atomic_open, atomic_save

HEADER = ["step", "split", "metric", "value"]


class MetricsLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop rows written after ``step`` (the resumed checkpoint) so a resumed log has no duplicates."""
        rows = [r for r in self.rows() if int(r["step"]) <= step]
        with atomic_open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, HEADER)
            writer.writeheader()
            writer.writerows(rows)

    def rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(HEADER)
            for k, v in values.items():
                writer.writerow([step, split, k, f"{float(v):.6g}"])

    def plot(self, out: Path, recall_keys: tuple[str, ...] = ("R@1", "R@10")) -> Path | None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        if not rows:
            return None
        loss = [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == "train" and r["metric"] == "loss"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        if loss:
            ax1.plot(*zip(*loss), lw=1)
        ax1.set_title("training loss")
        ax1.set_xlabel("step")
        splits = sorted({r["split"] for r in rows if r["split"] != "train"})
        for split in splits:
            for key in recall_keys:
                pts = [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == split and r["metric"] == key]
                if pts:
                    ax2.plot(*zip(*pts), marker="o", label=f"{split} {key}")
        ax2.set_title("validation recall (%)")
        ax2.set_xlabel("step")
        ax2.set_ylim(0, 100)
        if splits:
            ax2.legend(fontsize=8)
        fig.tight_layout()
        atomic_save(out, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
        plt.close(fig)
        return Path(out)
