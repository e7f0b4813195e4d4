"""Scores a data technique saw recently: quantiles as metrics, histograms for loggers that draw them."""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

QUANTILES = (0.1, 0.5, 0.9)


class ScoreStats:
    """The last ``window`` scores (kept and dropped separately): what the technique is acting on.

    Not part of a checkpoint: after a resume the statistics refill within a few batches, and they
    never feed back into training.
    """

    def __init__(self, window: int = 2048) -> None:
        self.kept: deque[float] = deque(maxlen=window)
        self.dropped: deque[float] = deque(maxlen=window)

    def record(self, scores: Tensor, kept_positions: Tensor) -> None:
        scores = scores.detach().float().cpu()
        mask = torch.zeros(scores.shape[0], dtype=torch.bool)
        mask[kept_positions.cpu()] = True
        self.kept.extend(scores[mask].tolist())
        self.dropped.extend(scores[~mask].tolist())

    def all_scores(self) -> Tensor:
        return torch.tensor([*self.kept, *self.dropped], dtype=torch.float32)

    def metrics(self) -> dict[str, float]:
        scores = self.all_scores()
        if scores.numel() == 0:
            return {}
        out = {f"score_p{int(q * 100)}": float(torch.quantile(scores, q)) for q in QUANTILES}
        if self.kept:
            out["score_mean_kept"] = sum(self.kept) / len(self.kept)
        if self.dropped:
            out["score_mean_dropped"] = sum(self.dropped) / len(self.dropped)
        return out

    def log_histograms(self, trainer, name: str) -> None:
        """Histograms of kept and dropped scores for TensorBoard (``add_histogram``); other loggers
        get the quantiles through ``metrics()``."""
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            add_histogram = getattr(getattr(logger, "experiment", None), "add_histogram", None)
            if add_histogram is None:
                continue
            for part, values in (("kept", self.kept), ("dropped", self.dropped)):
                if values:
                    add_histogram(
                        f"efficiency/{name}/scores_{part}", torch.tensor(list(values)), trainer.global_step
                    )
