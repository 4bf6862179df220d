"""Run a continual-learning experiment: ``python main.py --config exps/mgclip_cifar.json``.

``--set key=value`` overrides config keys (typed like YAML: 3, 1e-3, true, [1,2]).
``--resume RUN_DIR`` continues a stopped run after its last completed task;
``--resume`` with ``--config`` continues every seed of that config that has a checkpoint.
``--check`` makes every check a run makes before it starts, writes nothing, and stops;
``--print-config`` prints the resolved config (every default included) and stops.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MG-CLIP and CLIP baselines for class-incremental learning")
    p.add_argument("--config", help="JSON or YAML config file (see exps/); with --resume RUN_DIR the run's "
                                     "own config.json is used when this is left out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; repeatable, e.g. --set epochs=2 --set seed=[1,2]")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue from checkpoint.pt: of RUN_DIR, or (without RUN_DIR) of each seed's run "
                        "directory of --config")
    p.add_argument("--check", action="store_true",
                   help="make every check a run makes before it starts (config, run folders, data and official "
                        "files, device, backbone weights; downloads what is missing), write nothing, and stop")
    p.add_argument("--print-config", action="store_true",
                   help="print every key of the resolved config (defaults included; one block per method) and stop")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    args = p.parse_args(argv)
    if args.config is None and not isinstance(args.resume, str):
        p.error("--config is required (unless --resume RUN_DIR)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import os

    from toolbox.checkpoint import CheckpointError
    from toolbox.configs import build_config, build_configs
    from toolbox.data import DatasetError
    from toolbox.released import ReleasedFileError
    from toolbox.run_lock import RunLockedError
    from toolbox.trainer import RunInterrupted, check_only, precheck, run, run_one, side_by_side_summary
    from utils.clip_backbone import BackboneError
    from utils.config import ConfigError
    from utils.errors import NonFiniteError, user_message

    try:
        if isinstance(args.resume, str):
            run_dir = args.resume
            config = args.config or os.path.join(run_dir, "config.json")
            if not os.path.isdir(run_dir):
                raise CheckpointError(f"--resume {run_dir}: no such run directory")
            cfg = build_config(config, args.overrides)
            if len(cfg.seeds()) != 1:
                raise ConfigError(f"--resume {run_dir} continues one run: give one seed, not {cfg.seeds()}")
            if args.check:
                print(check_only(cfg, resume="required", run_dir=run_dir)[0])
                print("all checks passed: nothing was written; run without --check to continue")
                return 0
            run_one(cfg, cfg.seeds()[0], resume="required", run_dir=run_dir)
        else:
            configs = build_configs(args.config, args.overrides)  # several with model_name: [a, b, ...]
            if args.print_config:
                import yaml

                for cfg in configs:
                    print(f"# {cfg.model_name}\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
                return 0
            if args.check:
                for cfg in configs:
                    for line in check_only(cfg, resume=bool(args.resume)):
                        print(line)
                print("all checks passed: nothing was written; run without --check to start")
                return 0
            if len(configs) > 1:  # every method's folders and checkpoints, before the first method starts
                for cfg in configs:
                    precheck(cfg, resume=bool(args.resume))
            run_dirs = [d for cfg in configs for d in run(cfg, resume=bool(args.resume))]
            if len(configs) > 1:
                logging.getLogger("main").info(
                    "the methods side by side:\n%s\nplots and CSV: python -m toolbox.report %s",
                    side_by_side_summary(run_dirs), " ".join(sorted({cfg.logdir for cfg in configs})))
    except (ConfigError, DatasetError, BackboneError, CheckpointError, RunLockedError, ReleasedFileError) as e:
        # Problems with the user's input, or a run folder in use: one clear line, no traceback.
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except RunInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted before the run started; nothing was written", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's world: a full disk, a read-only folder (path and reason)
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
