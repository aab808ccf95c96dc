"""Python support for the MONAI bundles in bundles/ (sam, msa, unet).

The bundles are configuration; this package holds only what MONAI lacks, one module per role:
- datalist:   read prepared site datalists, pool several for centralized training
- metrics:    the paper's per-slice Dice / IoU (and the reference threshold sweep) as a MONAI metric
- report:     evaluation handler writing a per-sample CSV and a summary JSON (with per-volume 3D Dice)
- checkpoint: load trained weights that may hold only the transmitted tensors, strictly checked
- writers:    inference handler writing 3D NIfTI (restacked volumes) or PNG masks, plus overlay PNGs
- config:     train.json as the source of the network and defaults of the standalone inference.json
- patient_inference: inference on new patients (raw scans), run by the standalone inference.json, with
  raw_inputs (what a path holds, reading it), slice_inference (preprocessing, slice-wise prediction)
  and mask_writers (masks in the input's geometry, DICOM SEG, overlays)
Bundle configs refer to these by full module path (e.g. fedfms.bundle.metrics.SliceOverlapMetric).
"""
