"""``metagen-ppl simulate``: draw a scene from a model's ``simulate`` hook and write the data file."""

from __future__ import annotations

from metagen_ppl.apps.cli.common import EXIT_OK, Formatter, check_model_options, parse_options, prepare_output, report_created, say, seed_argument
from metagen_ppl.apps.cli.fit import MULTI_SCENE
from metagen_ppl.engine.registry import load_model
from metagen_ppl.engine.validate import check_options
from metagen_ppl.errors import DataError, ModelError
from metagen_ppl.io import save_data


def run(args) -> int:
    created = prepare_output(args.out)
    spec = load_model(args.model)
    if spec.name in MULTI_SCENE:
        raise ModelError(f"model {spec.name!r} simulates a list of scenes, not the single-scene data file "
                         f"of 'simulate'; {MULTI_SCENE[spec.name]}")
    if spec.simulate is None:
        raise ModelError(f"model {spec.name!r} defines no simulate(num_objects, num_obs, seed, **options); "
                         "it cannot simulate data")
    if args.num_objects < 1:
        raise DataError(f"--num-objects must be at least 1, got {args.num_objects}")
    if args.num_obs < 1:
        raise DataError(f"--num-obs must be at least 1, got {args.num_obs}")
    if args.num_objects > args.num_obs:
        raise DataError(f"--num-objects {args.num_objects} exceeds --num-obs {args.num_obs}; use K <= N")
    options = parse_options(args.option)
    check_model_options(spec, options, for_simulate=True)
    check_options(options, args.num_objects, where="--option")
    obj = spec.simulate(args.num_objects, args.num_obs, args.seed, **options)
    if isinstance(obj, list):
        raise ModelError(f"model {spec.name!r} simulates a list of scenes, not the single-scene data file "
                         f"of 'simulate'; {MULTI_SCENE.get(spec.name, 'call its simulate() from Python')}")
    if not isinstance(obj, dict) or "observations" not in obj:
        raise ModelError(f"model {spec.name!r}: simulate() must return a dict with 'observations'")
    obj = dict(obj)
    obj.setdefault("model", spec.name)
    obj.setdefault("num_objects", int(args.num_objects))
    obj.setdefault("seed", int(args.seed))
    if options:
        obj.setdefault("options", options)
    save_data(args.out, obj)
    say(f"simulated {len(obj['observations'])} observations of {args.num_objects} objects "
         f"(model {spec.name}, seed {args.seed}) -> {args.out}")
    report_created(created)
    return EXIT_OK


def add_parser(sub, parents: dict):
    """Register ``metagen-ppl simulate``."""
    p = sub.add_parser("simulate", parents=[parents["common"], parents["model"]], formatter_class=Formatter,
                       help="draw a scene and observations from a model; write a data JSON file",
                       description="Draw a ground-truth world and N observations from a model's "
                                   "simulate() hook and write them (with the truth) as JSON.")
    p.add_argument("--num-objects", "-K", type=int, required=True, help="number of objects K")
    p.add_argument("--num-obs", "-N", type=int, required=True, help="number of observations N")
    p.add_argument("--seed", type=seed_argument, default=0, help="random seed")
    p.add_argument("--out", "-o", required=True, help="output data file (JSON)")
    p.set_defaults(func=run)  # _cmd_simulate)
    return p
