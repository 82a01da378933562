"""Raw inputs read by recipes: MNIST IDX files, COCO annotations and masks, image+mask folders, the source cache."""
