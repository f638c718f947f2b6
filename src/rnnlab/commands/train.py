"""``rnnlab train``: a new run, a resumed one, or a fine-tuned copy of a finished one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab import distributed, fast, reports
from rnnlab.cli_parser import train_overrides
from rnnlab.config_resolve import resolve_config, resume_overrides
from rnnlab.errors import RnnlabError
from rnnlab.training import runner
from rnnlab.training.callbacks import PlotCurves, PrintEvaluations, ProgressBar
from rnnlab.training.finetune import finetune_config
from rnnlab.training.trainer import Callback, TrainingInterrupted

EXIT_INTERRUPTED = 130


def cmd_train(args: argparse.Namespace) -> int:
    fast.set_up_training_process()  # process-wide, so made here rather than by the library
    overrides = train_overrides(args)
    main = distributed.is_main()  # under torchrun, rank 0 alone prints
    bar = ProgressBar()
    callbacks = [bar] if bar.enabled else [PrintEvaluations()]
    if not args.no_plot:
        callbacks.append(PlotCurves())  # RUN/curves.png at the end, when matplotlib is installed
    if args.tensorboard:  # an optional dependency: imported only when asked for
        from rnnlab.training.tensorboard import TensorBoardLogger

        callbacks.append(TensorBoardLogger())  # fails here, before any work, without tensorboard
    try:
        if args.resume:
            allowed = resume_overrides(args, overrides)
            if args.max_minutes:
                callbacks.insert(0, BudgetNote(args.max_minutes))
            result = runner.resume(args.resume, allowed, callbacks=callbacks)
        elif args.finetune:
            if args.preset or args.config:
                raise RnnlabError("--finetune keeps the run's model and data: drop --preset and "
                                  "--config")
            config = finetune_config(args.finetune, overrides)
            if main:
                print(reports.run_header(config, args.out))
            result = runner.train(config, args.out, callbacks=callbacks)
        else:
            config = resolve_config(preset=args.preset, config_file=args.config,
                                    overrides=overrides)
            if main:
                print(reports.run_header(config, args.out))
            result = runner.train(config, args.out, callbacks=callbacks)
    except TrainingInterrupted as exc:
        if main:
            print(f"rnnlab: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint stands
        if main:
            print(f"rnnlab: interrupted at once{_last_checkpoint_hint(args.resume or args.out)}",
                  file=sys.stderr)
        return EXIT_INTERRUPTED
    if not main:
        return 0
    print(reports.run_summary(result))
    report, lm = result.final
    if report is not None:
        print(reports.lm_report(report))
    if lm is not None:
        for line in reports.lm_samples(lm, args.samples):
            print(line)
    return 0


def _last_checkpoint_hint(run: str | None) -> str:
    """What a run stopped at once still holds: its last checkpoint, or nothing."""
    state = None
    if run and (Path(run) / ckpt.TRAINER).exists():
        try:
            state = ckpt.load_trainer_state(Path(run) / ckpt.TRAINER)
        except RnnlabError:  # unreadable: claim no step
            state = None
    return ("" if not run else "; nothing was saved" if state is None else
            f"; the last checkpoint (step {state.get('step')}) stands and nothing newer "
            f"was saved; resume from it with: rnnlab train --resume {run}")


class BudgetNote(Callback):
    """Says, once a resumed run has loaded its checkpoint, how much of the ``--max-minutes``
    budget is left: it counts the run's whole training time, not extra time."""

    def __init__(self, minutes: float):
        self.minutes = minutes

    def on_train_start(self, trainer: Any) -> None:
        print(reports.budget_line(self.minutes, trainer.elapsed / 60), flush=True)
