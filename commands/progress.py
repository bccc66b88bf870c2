"""Training progress for `cnnc train`: a ``rich`` bar on a terminal, one plain line per
epoch anywhere else (logs, pipes, tests), unchanged from what scripts have always read.

    progress = progress_for(sys.stdout)
    progress.start_epoch(epoch, epochs, steps)
    progress.step(done, steps, loss, accuracy, images_per_second)   # after each batch
    progress.end_epoch(stats, epochs)                               # a runtime.train stats

``stats`` has ``epoch``, ``train_loss``, ``train_accuracy``, ``test_accuracy`` (None when
there is no test set), ``images_per_second``, ``seconds`` and ``lr``. ``rich`` is imported
only when a bar is drawn.
"""

from __future__ import annotations


def epoch_line(stats, epochs: int) -> str:
    """The plain line of one finished epoch."""
    test = "-" if stats.test_accuracy is None else f"{stats.test_accuracy:.2%}"
    width = len(str(epochs))
    return (f"epoch {stats.epoch:>{width}}/{epochs}  loss {stats.train_loss:.4f}  "
            f"train acc {stats.train_accuracy:.2%}  test acc {test}  "
            f"{stats.images_per_second:,.0f} img/s  {stats.seconds:.1f}s  lr {stats.lr:.3g}")


def progress_for(out):
    """A `Bar` when ``out`` is a terminal, else `Lines`."""
    try:
        terminal = out.isatty()
    except (AttributeError, ValueError, OSError):
        terminal = False
    return Bar(out) if terminal else Lines(out)


class Lines:
    """One plain line per epoch, for logs and pipes."""

    def __init__(self, out):
        self.out = out

    def start_epoch(self, epoch, epochs, steps):
        pass

    def step(self, done, steps, loss, accuracy, images_per_second):
        pass

    def end_epoch(self, stats, epochs):
        print(epoch_line(stats, epochs), file=self.out, flush=True)


class Bar(Lines):
    """A rich progress bar per epoch, redrawn in place (at most ten times a second), that
    leaves the epoch's plain line behind when the epoch ends."""

    def __init__(self, out):
        super().__init__(out)
        self._progress = None
        self._task = None

    def start_epoch(self, epoch, epochs, steps):
        from rich.console import Console
        from rich.progress import (
            BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn(f"epoch {epoch:>{len(str(epochs))}}/{epochs}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=Console(file=self.out),
            transient=True,
            refresh_per_second=10,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, detail="")

    def step(self, done, steps, loss, accuracy, images_per_second):
        if self._progress is None:
            return
        detail = f"loss {loss:.4f}  acc {accuracy:.2%}  {images_per_second:,.0f} img/s"
        self._progress.update(self._task, completed=done, total=steps, detail=detail)

    def end_epoch(self, stats, epochs):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        super().end_epoch(stats, epochs)
