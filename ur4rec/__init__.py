"""UR4Rec Workbench: LLM-text-augmented sequential recommendation, notebook first."""

__version__ = "0.2.0"
