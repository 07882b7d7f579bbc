"""CodeBrain: impute any missing brain MRI contrast from any subset of the others."""

__version__ = "0.1.0"

CONTRASTS = ("T1", "T2", "PD", "FLAIR", "T1Gd")
