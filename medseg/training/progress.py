"""Progress display (rich on a terminal, one plain line per epoch otherwise) and the ``progress.png`` plot."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from medseg.utils.files import atomic_write


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def format_epoch(record: Mapping[str, Any], epochs: int, eta_s: float) -> str:
    """One line: epoch, losses, pseudo-Dice, EMA, lr, throughput, data wait and ETA."""
    dice = " ".join(f"{d:.3f}" for d in record["pseudo_dice"])
    return (
        f"epoch {record['epoch'] + 1}/{epochs}  train_loss {record['train_loss']:.4f}  val_loss "
        f"{record['val_loss']:.4f}  pseudo_dice [{dice}]  ema {record['ema_dice']:.4f}  lr {record['lr']:.2e}  "
        f"{record['iterations_per_s']:.2f} it/s  data_wait {100 * record['data_wait_fraction']:.1f}%  "
        f"{record['epoch_time_s']:.1f} s  eta {_eta(eta_s)}"
    )


class Progress:
    """Reports training progress.

    Args:
        epochs: Total epochs.
        iterations: Training iterations per epoch.
        mode: ``auto`` (rich when stdout is a terminal), ``rich`` or ``plain``.
        enabled: ``False`` on DDP ranks other than 0.
        stream: Where plain lines go (stdout).
    """

    def __init__(self, epochs: int, iterations: int, mode: str = "auto", enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.epochs, self.iterations, self.enabled = epochs, iterations, enabled
        self.stream = stream or sys.stdout
        self.rich = enabled and (mode == "rich" or (mode == "auto" and self.stream.isatty()))
        self._bar: Any = None
        self._task: Any = None
        self._epoch_times: list[float] = []

    def __enter__(self) -> Progress:
        if self.rich:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  pseudo-Dice {task.fields[dice]}  {task.fields[speed]}"),
                TextColumn("eta {task.fields[eta]}"), TimeRemainingColumn(),
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def start_epoch(self, epoch: int) -> None:
        """A new epoch begins."""
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task("train", total=self.iterations, epoch=f"{epoch + 1}/{self.epochs}",
                                            loss="-", dice="-", speed="", eta=self._eta_text(epoch))
        self._t0 = time.perf_counter()

    def _eta_text(self, epoch: int) -> str:
        if not self._epoch_times:
            return "?"
        mean = sum(self._epoch_times[-5:]) / len(self._epoch_times[-5:])
        return _eta(mean * (self.epochs - epoch))

    def step(self, iteration: int, loss: float) -> None:
        """Iteration ``iteration`` (0-based) of the epoch finished with ``loss``."""
        if self._bar is not None:
            speed = (iteration + 1) / max(time.perf_counter() - self._t0, 1e-9)
            self._bar.update(self._task, completed=iteration + 1, loss=f"{loss:.4f}", speed=f"{speed:.2f} it/s")

    def end_epoch(self, record: Mapping[str, Any]) -> None:
        """Print the epoch's summary line."""
        self._epoch_times.append(float(record["epoch_time_s"]))
        remaining = self.epochs - record["epoch"] - 1
        mean = sum(self._epoch_times[-5:]) / len(self._epoch_times[-5:])
        line = format_epoch(record, self.epochs, mean * remaining)
        if self._bar is not None:
            dice = " ".join(f"{d:.3f}" for d in record["pseudo_dice"])
            self._bar.update(self._task, dice=f"[{dice}] ema {record['ema_dice']:.3f}")
            self._bar.console.print(line)
        elif self.enabled:
            print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """Print a line (rank 0 only)."""
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.enabled:
            print(text, file=self.stream, flush=True)


def plot_progress(records: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write ``progress.png``: losses, pseudo-Dice and its EMA per epoch, learning rate, epoch time."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    epochs = [r["epoch"] + 1 for r in records]
    style = {"marker": "o" if len(epochs) <= 30 else None, "markersize": 3}  # a line needs two points: mark short runs
    fig = Figure(figsize=(9, 9))
    ax1, ax3, ax4 = fig.subplots(3, 1, sharex=True)
    ax1.plot(epochs, [r["train_loss"] for r in records], color="tab:blue", label="train loss", **style)
    ax1.plot(epochs, [r["val_loss"] for r in records], color="tab:red", label="val loss", **style)
    ax1.set_ylabel("loss")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [r["mean_pseudo_dice"] for r in records], color="tab:green", ls=":", label="pseudo-Dice", **style)
    ax2.plot(epochs, [r["ema_dice"] for r in records], color="tab:green", label="pseudo-Dice (EMA)", **style)
    ax2.set_ylabel("pseudo-Dice")
    lines = ax1.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize="small")
    ax3.plot(epochs, [r["epoch_time_s"] for r in records], color="tab:gray", **style)
    ax3.set_ylabel("epoch time (s)")
    ax4.plot(epochs, [r["lr"] for r in records], color="tab:purple", **style)
    ax4.set_ylabel("learning rate")
    ax4.set_xlabel("epoch")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    atomic_write(path, lambda h: h.write(buffer.getvalue()))
