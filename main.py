"""Run a continual-learning experiment: ``python main.py --config exps/mgclip_cifar.json``.

``--set key=value`` overrides config keys (typed like YAML: 3, 1e-3, true, [1,2]).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MG-CLIP and CLIP baselines for class-incremental learning")
    p.add_argument("--config", required=True, help="JSON or YAML config file (see exps/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; repeatable, e.g. --set epochs=2 --set seed=[1,2]")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from utils.clip_backbone import BackboneError
    from utils.config import ConfigError, build_config
    from utils.data import DatasetError
    from utils.trainer import run

    try:
        cfg = build_config(args.config, args.overrides)
        run(cfg)
    except (ConfigError, DatasetError, BackboneError) as e:
        # Problems with the user's input: one clear line, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
