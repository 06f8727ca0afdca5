"""Privacy audits: membership-inference attacks (LiRA, threshold attacks), their metrics, memorization."""
