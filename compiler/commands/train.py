"""``edgecnn train``: train a model with the NumPy reference backend."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from edgecnn.runtime.errors import InputError

HELP = "train a model (zoo name, saved model or .onnx) on digits, mnist, an .npz file or an image folder"


def add_arguments(parser):
    from ..train import OPTIMIZERS, SCHEDULES

    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="zoo name, saved model directory or .onnx file (omit with --resume)")
    parser.add_argument("--dataset", default="digits", metavar="NAME_OR_PATH",
                        help="digits (default), mnist, an .npz file (x: N,C,H,W; y: N) or a folder of class folders")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (default 10; with --resume: "
                        "the total to reach, default the original run's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05 for sgd, 0.001 for adam)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    parser.add_argument("--warmup-epochs", type=float, default=0.0)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--loss", choices=("cross_entropy", "mse"), default="cross_entropy")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the shuffles and the zoo weights")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads for training (default: the BLAS library's own choice)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-o", "--output", metavar="RUN_DIR", help="run directory (metrics, checkpoint, model, plot)")


def run(args) -> int:
    if args.threads is None:
        return _run(args)
    if args.threads < 1:
        raise InputError(f"--threads must be a positive integer. Received: threads={args.threads}")
    # threadpoolctl comes with scikit-learn (a dependency); it resizes the BLAS pool already loaded.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        return _run(args)


def _run(args) -> int:
    from ..train import TrainConfig, Trainer, train

    progress = not args.quiet
    if args.resume:
        if args.model:
            raise InputError(f"give either MODEL or --resume RUN_DIR, not both. Received: model={args.model!r}, "
                             f"resume={args.resume!r}")
        run_dir = Path(args.output or args.resume)
        trainer = Trainer.resume(args.resume, epochs=args.epochs)
        if run_dir != Path(args.resume):
            raise InputError(f"--resume continues in its own run directory; -o must be omitted or the same. "
                             f"Received: resume={args.resume!r}, output={args.output!r}")
        result = trainer.fit(run_dir, progress=progress)
    else:
        if not args.model:
            raise InputError("MODEL is required (a zoo name, a saved model or an .onnx file) unless --resume is given")
        if not args.output:
            raise InputError("-o RUN_DIR is required: where metrics, checkpoints and the model go")
        graph = _load_model(args.model, args.seed)
        config = TrainConfig(epochs=args.epochs or 10, batch_size=args.batch_size, optimizer=args.optimizer,
                             lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                             weight_decay=args.weight_decay, schedule=args.schedule,
                             warmup_epochs=args.warmup_epochs, loss=args.loss,
                             label_smoothing=args.label_smoothing, seed=args.seed)
        dataset = args.dataset
        if Path(dataset).exists():
            # Stored absolute so that --resume finds the data from any working directory.
            dataset = str(Path(dataset).resolve())
        result = train(graph, dataset, config, args.output, progress=progress, model_spec=args.model)
        run_dir = Path(args.output)
    result["run_dir"] = str(run_dir)
    result["model_dir"] = str(run_dir / "model")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"test accuracy {result['test_accuracy']:.4f} after {result['epochs']} epochs "
              f"({result['seconds']:.1f} s of training); model saved to {run_dir / 'model'}", file=sys.stderr)
    return 0


def _load_model(spec: str, seed: int):
    from .. import zoo
    from ..models import load_any

    # A zoo model is built from the run's seed, so --seed varies the initial weights too.
    return zoo.build(spec, seed=seed) if spec in zoo.NAMES else load_any(spec)
