"""One reader per source format (coco, yolo, voc, imagefolder, csv, masks, files): source files to records."""
