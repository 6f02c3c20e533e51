"""DistillSpec (arXiv 2310.08461): speculative decoding with a draft model distilled towards the target."""
