"""The ``files`` layout: an images folder joined per image with up to three optional label files.

A COCO JSON gives boxes, a folder of mask PNGs the segmentation, a ``file,label`` CSV the image
classes. An image absent from one of them is simply unlabelled for that task (partial labels are
normal here, so nothing is reported). This is the layout of the built-in shapes dataset.
"""

from __future__ import annotations

from vision_mtl.config import SourceConfig
from vision_mtl.data.readers.coco import CocoFile
from vision_mtl.data.readers.label_csv import source_labels
from vision_mtl.data.readers.masks import find_mask, mask_classes
from vision_mtl.data.readers.context import ReadContext
from vision_mtl.data.records import Record, SourceIndex
from vision_mtl.errors import DataError


def read(cfg: SourceConfig, ctx: ReadContext) -> SourceIndex:
    """Format ``files``: every image under ``images`` (sorted), labelled by whichever files list it.

    COCO ``file_name`` and the CSV's file column match the path relative to the images folder, or its base name.
    """
    images_dir = ctx.folder(cfg.images, "images")
    masks_dir = ctx.folder(cfg.masks, "masks") if cfg.masks else None
    coco = CocoFile(ctx.file(cfg.annotations, "annotations"), ctx.problems) if cfg.annotations else None
    labels = source_labels(cfg, ctx)
    paths = ctx.images(images_dir)
    if not paths:
        raise DataError(f"{ctx.name}: no images found in '{images_dir}'")
    annotated = {img["file_name"]: (img, inst) for img, inst in zip(coco.images, coco.instances)} if coco else {}
    records = []
    for index, path in enumerate(paths):
        key = path.relative_to(images_dir).as_posix()
        img, instances = annotated.get(key) or annotated.get(path.name) or (None, None)
        records.append(Record(
            path, key, img["id"] if img else index, (img["height"], img["width"]) if img else None, instances,
            mask_file=find_mask(masks_dir, key) if masks_dir else None,
            classes=labels.get(key, labels.get(path.name)) if labels is not None else None))
    classes, provides = {}, set()
    if coco is not None:
        provides.add("detection")
        classes["detection"] = coco.class_names
    table = None
    if masks_dir is not None:
        provides.add("segmentation")
        if "segmentation" in ctx.tasks:
            classes["segmentation"], table = mask_classes(cfg, ctx, ["background", *coco.class_names] if coco else None)
    if labels is not None:
        provides.add("classification")
        classes["classification"] = sorted({n for r in records for n in r.classes or ()})
    return SourceIndex(ctx.name, records, provides, classes, declared={"detection", "segmentation"} & provides,
                       category_ids=coco.category_ids if coco else None, mask_values=table)
