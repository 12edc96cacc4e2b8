"""Write a synthetic scene as an MP4 clip, a COCO video data set or a labelme folder.

- ``export_mp4``: H.264 (libx264, yuv420p) via PyAV at ``scene.fps``.
- ``export_coco``: PNG frames + ``annotations.json`` in COCO instances format with
  ``videos``, per-image ``video_id``/``frame_index`` and per-annotation
  ``track_id``; segmentations are exact RLE; category ids are 1..N in ``CLASSES`` order.
- ``export_labelme``: PNG frames + one labelme JSON each (polygons from mask
  contours, labels ``circle1``, ``circle2`` ... per instance, holes joined to
  their outline by a zero-width cut) + ``label_names.txt``.

Command line (:func:`run`, through the light entry :mod:`rtseg.data.export`, which parses and checks the options):
``python -m rtseg.data.export --seed 3 --out out/synthetic`` writes all three; it refuses an ``--out`` that already
holds any of them (an earlier export's frames would mix with the new ones) and deletes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import av
import cv2
import numpy as np

from rtseg.data.dataset import masks_to_boxes
from rtseg.data.synthetic import CLASSES, SyntheticScene, check_scene_args
from rtseg.errors import ConfigError, SinkError
from rtseg.imageio import imwrite
from rtseg.ops.rle import encode_rle
from rtseg.video.h264 import check_crf


def _frames(scene: SyntheticScene, every: int, owner: str) -> range:
    """Frames 0, every, 2 * every … of ``scene``; ConfigError ``"<owner>: every must be an integer >= 1, got 0"``
    for an ``every`` that is no such integer."""
    check_scene_args(owner, every=every)
    return range(0, len(scene), every)


def _out_dir(path: str | os.PathLike) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"{out}: cannot create the output folder ({exc.strerror}); choose another path") from None
    return out


def _write_image(path: Path, image: np.ndarray) -> None:
    if not imwrite(path, image):
        raise SinkError(f"{path}: cannot write the image; check the folder is writable")


def export_mp4(scene: SyntheticScene, path: str | os.PathLike, *, crf: int = 18) -> Path:
    """Encode every frame of ``scene`` to ``path`` (H.264 MP4, ``scene.fps`` frames per second) at libx264's
    ``crf`` (0 lossless .. 51 worst)."""
    check_crf("export_mp4", crf)
    path = Path(path)
    if scene.width % 2 or scene.height % 2:
        raise ConfigError(f"export_mp4: H.264 yuv420p needs even width and height, got {scene.width}x{scene.height}")
    _out_dir(path.parent)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=scene.fps)
        stream.width, stream.height, stream.pix_fmt = scene.width, scene.height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for image, _ in scene:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode(None))
    return path


def export_coco(scene: SyntheticScene, out_dir: str | os.PathLike, *, every: int = 1,
                annotation_name: str = "annotations.json") -> Path:
    """Write frames 0, every, ... as PNG and their instances as COCO JSON; returns the JSON path."""
    frames = _frames(scene, every, "export_coco")  # before anything is written
    out = _out_dir(out_dir)
    images, annotations = [], []
    for i in frames:
        image, instances = scene.frame(i)
        name = f"frame_{i:06d}.png"
        _write_image(out / name, image)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": scene.width, "height": scene.height,
                       "video_id": 1, "frame_index": i})
        masks = np.array([inst.mask for inst in instances], bool).reshape(-1, scene.height, scene.width)
        for inst, rle, box in zip(instances, encode_rle(masks), masks_to_boxes(masks).tolist()):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": inst.class_id + 1,
                "segmentation": rle, "area": int(inst.mask.sum()),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "iscrowd": 0, "track_id": inst.track_id,
            })
    data = {
        "info": {"description": f"rtseg synthetic scene seed {scene.seed}"},
        "videos": [{"id": 1, "name": f"synthetic_{scene.seed}", "width": scene.width, "height": scene.height,
                    "length": len(images), "fps": scene.fps / every}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)],
    }
    path = out / annotation_name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def mask_to_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """(H, W) bool mask -> list of (K, 2) int32 xy polygons (K >= 3), one per connected part.

    A part with holes becomes one polygon: each hole is joined to the outline by a
    zero-width cut, so filling the polygon (even-odd, e.g. ``cv2.fillPoly``) leaves the
    hole empty. Parts too thin to have an area (fewer than 3 contour points) are left out.
    """
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    links = hierarchy[0]  # [next, previous, first_child, parent]
    polygons = []
    for k, contour in enumerate(contours):
        if links[k][3] != -1 or len(contour) < 3:
            continue
        poly = contour.reshape(-1, 2)
        child = links[k][2]
        while child != -1:
            hole = contours[child].reshape(-1, 2)
            if len(hole) >= 3:
                poly = _join_hole(poly, hole)
            child = links[child][0]
        polygons.append(poly.astype(np.int32))
    return polygons


def _join_hole(outline: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Splice ``hole`` (M, 2) into ``outline`` (K, 2) along the shortest vertex-to-vertex cut."""
    d = ((outline[:, None, :].astype(np.int64) - hole[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    ring = np.concatenate([hole[j:], hole[:j + 1]])
    return np.concatenate([outline[:i + 1], ring, outline[i:]])


def export_labelme(scene: SyntheticScene, out_dir: str | os.PathLike, *, every: int = 1) -> Path:
    """Write frames 0, every, ... as PNG + labelme JSON, and ``label_names.txt``; returns the folder."""
    frames = _frames(scene, every, "export_labelme")  # before anything is written
    out = _out_dir(out_dir)
    (out / "label_names.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    for i in frames:
        image, instances = scene.frame(i)
        name = f"frame_{i:06d}.png"
        _write_image(out / name, image)
        counts: dict[int, int] = {}
        shapes = []
        for inst in instances:
            counts[inst.class_id] = counts.get(inst.class_id, 0) + 1
            label = f"{CLASSES[inst.class_id]}{counts[inst.class_id]}"
            shapes += [{"label": label, "points": poly.tolist(), "group_id": None, "description": "",
                        "shape_type": "polygon", "flags": {}} for poly in mask_to_polygons(inst.mask)]
        record = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": name, "imageData": None,
                  "imageHeight": scene.height, "imageWidth": scene.width}
        (out / f"frame_{i:06d}.json").write_text(json.dumps(record), encoding="utf-8")
    return out


def run(args: argparse.Namespace) -> None:
    """``python -m rtseg.data.export``: write the scene the options ``args`` name (parsed and checked by
    :func:`rtseg.data.export.parse`, its light entry, before torch is imported) in each of ``args.formats`` under
    ``args.out``, printing each path written."""
    scene = SyntheticScene(args.seed, width=args.width, height=args.height, num_frames=args.frames)
    if "mp4" in args.formats:
        print(export_mp4(scene, args.out / "clip.mp4"))
    if "coco" in args.formats:
        print(export_coco(scene, args.out / "coco", every=args.every))
    if "labelme" in args.formats:
        print(export_labelme(scene, args.out / "labelme", every=args.every))
