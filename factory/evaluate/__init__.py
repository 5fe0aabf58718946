"""Evaluation of builds. For now: the paper's perplexity protocol (the evaluation issue adds harnesses)."""
