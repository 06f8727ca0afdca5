"""demem: robust adversarial training with the DeMem de-memorization penalty, and the privacy
audits that measure what it buys. Plain PyTorch; never imports Ray (that lives in `orchestrator/`)."""

__version__ = "0.1.0"
