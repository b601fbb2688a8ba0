"""The Feast repo and the pandas code that computes user and item features from the event lake (issue 3)."""
