"""``metagen-ppl convert-coco``: COCO detection results plus camera poses -> a ``metagen-detections`` file."""

from __future__ import annotations

from metagen_ppl.apps.cli.common import EXIT_OK, Formatter, prepare_output, report_created, say
from metagen_ppl.domain.camera import parse_camera
from metagen_ppl.domain.coco import convert_coco
from metagen_ppl.io import atomic_write_json


def add_parser(sub, parents: dict):
    """Register ``metagen-ppl convert-coco``."""
    p = sub.add_parser(
        "convert-coco", formatter_class=Formatter, parents=[parents["common"]],
        help="convert COCO detection results and per-image camera poses into a detection file for evaluate",
        description="Convert a detector's COCO-format results ([{image_id, category_id, bbox: [x, y, w, h], "
                    "score}, ...]) and a poses file (per image id: video, frame, camera position, look-at "
                    "point) into a metagen-detections file (the schema in the README, 'Detection files') that "
                    "'metagen-ppl evaluate --data' reads.",
        epilog="example:\n"
               "  metagen-ppl convert-coco --detections det.json --poses poses.json \\\n"
               "      --categories 62=chair,64=plant \\\n"
               "      --camera pinhole:fx=500,fy=500,cx=320,cy=240,width=640,height=480 \\\n"
               "      --out videos.json")
    p.add_argument("--detections", required=True, help="COCO results JSON: [{image_id, category_id, bbox, score}]")
    p.add_argument("--poses", required=True,
                   help="poses JSON: [{image_id, video, frame, camera: [x, y, z], lookat: [x, y, z]}] (or "
                        "{\"poses\": [...], \"camera\": {...}})")
    p.add_argument("--categories", required=True, metavar="LABEL=NAME,...|FILE",
                   help="names of the category ids: a COCO annotation file (its 'categories'), a categories "
                        "list, or a mapping such as 62=chair,64=plant")
    p.add_argument("--camera", default=None, metavar="MODEL:KEY=VALUE,...|FILE",
                   help="pinhole:fx=,fy=,cx=,cy=,width=,height= or angle-linear:fov_deg=,width=,height=, JSON or "
                        "a JSON file (default: the poses file's 'camera')")
    p.add_argument("--drop-unknown", action="store_true",
                   help="drop detections whose category id is not among the categories (default: an error)")
    p.add_argument("--out", "-o", required=True, help="output detection file (JSON)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Convert, write ``--out`` atomically, print one summary line."""
    created = prepare_output(args.out)
    obj = convert_coco(args.detections, args.poses, categories=args.categories, camera=args.camera,
                       drop_unknown=args.drop_unknown)
    atomic_write_json(args.out, obj)
    info = obj["conversion"]
    dropped = sum(info["dropped_unknown_category"].values())
    say(f"{info['detections']} detections of {info['images']} images in {info['videos']} videos, "
        f"{len(obj['categories'])} categories, camera {parse_camera(obj['camera']).describe()}"
        + (f"; dropped {dropped} of unknown categories" if dropped else "") + f" -> {args.out}")
    report_created(created)
    return EXIT_OK
