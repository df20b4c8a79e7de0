"""Evaluation: the statistics (pure functions of the zoo DataFrame) and the leaderboard's numbers."""
