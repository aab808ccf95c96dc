"""fedfms: federated fine-tuning of Segment Anything for multi-site medical image segmentation."""

__version__ = "0.1.0"
