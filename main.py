"""Run a continual-learning experiment: ``python main.py --config exps/mgclip_cifar.json``.

``--set key=value`` overrides config keys (typed like YAML: 3, 1e-3, true, [1,2]).
``--resume RUN_DIR`` continues a stopped run after its last completed task;
``--resume`` with ``--config`` continues every seed of that config that has a checkpoint.
``--overwrite`` replaces an earlier run in a run folder, which is kept until the new run has
finished (without it a folder holding a run's results or checkpoint is refused).
``--check`` makes every check a run makes before it starts, writes nothing, and stops;
``--print-config`` prints the resolved config (every default included) and stops.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MG-CLIP and CLIP baselines for class-incremental learning")
    p.add_argument("--config", help="JSON or YAML config file (see exps/); with --resume RUN_DIR the run's "
                                     "own config.json is used when this is left out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; repeatable, e.g. --set epochs=2 --set seed=[1,2]")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                       help="continue from checkpoint.pt: of RUN_DIR, or (without RUN_DIR) of each seed's run "
                            "directory of --config")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the earlier run in a run folder: the new run works beside it and its files "
                            "take the earlier run's place only once it has finished (without this flag a folder "
                            "that holds a run's results or checkpoint is refused)")
    p.add_argument("--check", action="store_true",
                   help="make every check a run makes before it starts (config, run folders, data and official "
                        "files, device, backbone weights; downloads what is missing) and decode every image the "
                        "run's tasks will read with the run's own decoder (training and test images of every task; "
                        "not the held-out zero_shot_eval images), write nothing in the run folders, and stop")
    p.add_argument("--print-config", action="store_true",
                   help="print every key of the resolved config (defaults included; one block per method) and stop")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    args = p.parse_args(argv)
    if args.config is None and not isinstance(args.resume, str):
        p.error("--config is required (unless --resume RUN_DIR)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for console in [h for h in root.handlers if h not in before]:  # -q quiets the console, never run.log
        console.setLevel(logging.WARNING if args.quiet else logging.INFO)
    # Imported after the arguments are read: --help and usage errors answer without loading torch.
    from toolbox import interrupts
    from toolbox.exit_codes import exit_code

    with interrupts.installed(exiting=argv is None):  # argv None: the command line, which exits after this
        try:
            _main(args)
        except BaseException as e:
            code = exit_code(e)
            if code is None:
                raise
            return code
        if interrupts.received_while_held():
            print("note: Ctrl-C arrived after the run had finished and was ignored; every result is complete",
                  file=sys.stderr)
    return 0


def _main(args: argparse.Namespace) -> None:
    # Imported here, not at the top, for the same reason as in main(): --help without loading torch.
    from toolbox.checkpoint import CheckpointError
    from toolbox.configs import build_config, build_configs
    from toolbox.report import run_summary, seeds_summary, side_by_side_summary
    from toolbox.trainer import check_only, precheck, run, run_config_path, run_one
    from utils.config import ConfigError

    if isinstance(args.resume, str):
        run_dir = args.resume
        if not os.path.isdir(run_dir):
            raise CheckpointError(f"--resume {run_dir}: no such run directory")
        cfg = build_config(args.config or run_config_path(run_dir), args.overrides)
        if len(cfg.seeds()) != 1:
            raise ConfigError(f"--resume {run_dir} continues one run: give one seed, not {cfg.seeds()}")
        if args.check:
            print(check_only(cfg, resume="required", run_dir=run_dir)[0])
            print("all checks passed: nothing was written; run without --check to continue")
            return
        run_one(cfg, cfg.seeds()[0], resume="required", run_dir=run_dir, summary=run_summary)
        return
    configs = build_configs(args.config, args.overrides)  # several with model_name: [a, b, ...]
    if args.print_config:
        import yaml

        for cfg in configs:
            print(f"# {cfg.model_name}\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return
    resume, overwrite = bool(args.resume), args.overwrite
    if args.check:
        for cfg in configs:
            for line in check_only(cfg, resume=resume, overwrite=overwrite):
                print(line)
        print("all checks passed: nothing was written; run without --check to start")
        return
    if len(configs) > 1:  # every method's folders and checkpoints, before the first method starts
        for cfg in configs:
            precheck(cfg, resume=resume, overwrite=overwrite)
    run_dirs = []
    for cfg in configs:
        dirs = run(cfg, resume=resume, overwrite=overwrite, summary=run_summary)
        if len(dirs) > 1:  # <prefix>_summary.json beside the runs, and the table over the seeds
            seeds_summary(dirs, cfg.seeds(), cfg.prefix)
        run_dirs += dirs
    if len(configs) > 1:
        logging.getLogger("main").info(
            "the methods side by side:\n%s\nplots and CSV: python -m toolbox.report %s",
            side_by_side_summary(run_dirs), " ".join(sorted({cfg.logdir for cfg in configs})))


if __name__ == "__main__":
    sys.exit(main())
