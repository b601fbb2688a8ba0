"""Two-tower retrieval and multi-task ranking models, their training loop, evaluation and publishing (issue 4)."""
